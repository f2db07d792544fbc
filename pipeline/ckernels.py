"""Compile a C source of this package into a shared library on first use, cached per source,
flags, compiler and CPU; load it with ctypes.

A plain C compiler (``$CC``, else ``cc``; GCC, for its vector extensions) is all it
needs: no PyTorch headers, so a build takes about a second. ``-march=native`` makes the
library specific to this CPU, so the cache key includes the CPU's model and flags; a cache
copied to another machine is rebuilt, never run. ``PORTRAIT_CURATION_NATIVE_MARCH`` sets
another ``-march`` (``x86-64-v3``: AVX2 machines; ``x86-64-v2``: any recent x86). Libraries
are loaded after torch: both then share torch's OpenMP runtime (same soname
``libgomp.so.1``), so the two thread pools do not compete for cores. Users:
``pipeline.native`` (inference kernels) and ``pipeline.trainops`` (training kernels).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

import torch  # noqa: F401  (loaded first: the kernels then share its OpenMP runtime)

# -fno-trapping-math: the kernels never read floating-point exception flags, and without it GCC
# leaves a select such as PReLU's ``y > 0 ? y : a * y`` as a branch on CPUs without AVX-512's masks
# (AVX2 here): a branch mispredicted on half the pixels, which made the training kernels' BN + PReLU
# 10x slower than memory speed. Values are the same with or without it.
BASE_FLAGS = ("-O3", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
CACHE_ENV = "PORTRAIT_CURATION_NATIVE_CACHE"
MARCH_ENV = "PORTRAIT_CURATION_NATIVE_MARCH"  # e.g. x86-64-v3 for a library other CPUs can run


def compiler_flags() -> tuple[str, ...]:
    return (*BASE_FLAGS, f"-march={os.environ.get(MARCH_ENV) or 'native'}")


class NativeBuildError(RuntimeError):
    """The kernels could not be compiled or loaded (no compiler, compiler error, bad cache)."""


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "portrait-curation" / "native"


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def _compiler_version(compiler: list[str]) -> str:
    try:
        done = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NativeBuildError(f"no C compiler: running {' '.join(compiler)!r} failed ({exc}); "
                               "install gcc or set CC") from exc
    return done.stdout


def library_path(source: Path) -> Path:
    """Path of the compiled library for this source, compiler and CPU; builds it if missing."""
    compiler = _compiler()
    key = hashlib.sha256()
    flags = compiler_flags()
    for part in (source.read_bytes(), " ".join(flags).encode(), _compiler_version(compiler).encode(),
                 _cpu_identity().encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    command = [*compiler, *flags, str(source), "-o", tmp_name, "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling the native kernels failed ({' '.join(command)}):\n{done.stderr}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def open_library(source: Path) -> ctypes.CDLL:
    path = library_path(source)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeBuildError(f"loading {path} failed ({exc}); delete it to rebuild") from exc
