"""One file hash for the whole pipeline.

Downloads are verified, review decisions are tied to a mask and assemble checks that
tie with the same function, so "the same mask" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (archives can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
