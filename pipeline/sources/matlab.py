"""MATLAB .mat reading (EG1800 masks and split lists, CCP annotations).

A compressed .mat variable can claim any size: a 400 KB file holding a 20000x20000
mask decompresses to 400 MB. ``load_mat_variable`` therefore reads the variable's
dimensions from its header first (decompressing only the first few hundred bytes) and
refuses one larger than the caller's limit before scipy allocates anything.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.images import BadImageError, _max_file_bytes

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_HEADER_BYTES = 128
_PEEK_BYTES = 512  # enough for a variable's flags, dimensions and name


class _MatHeaderError(ValueError):
    pass


def _tag(buf: bytes, pos: int, endian: str) -> tuple[int, int, int, int]:
    """(type, size, start of data, start of the next element) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _MatHeaderError("truncated element tag")
    first, second = struct.unpack_from(endian + "II", buf, pos)
    if first >> 16:  # "small data element": size and type packed in 4 bytes, data in the next 4
        return first & 0xFFFF, first >> 16, pos + 4, pos + 8
    return first, second, pos + 8, pos + 8 + second + (-second % 8)


def _matrix_header(buf: bytes, endian: str) -> tuple[str, tuple[int, ...]]:
    """Name and dimensions of the miMATRIX element that starts ``buf``."""
    mdtype, _, pos, _ = _tag(buf, 0, endian)
    if mdtype != _MI_MATRIX:
        raise _MatHeaderError(f"expected a matrix element, found type {mdtype}")
    _, _, _, pos = _tag(buf, pos, endian)  # array flags
    dtype, size, start, pos = _tag(buf, pos, endian)
    if dtype != _MI_INT32 or size % 4 or start + size > len(buf):
        raise _MatHeaderError("malformed dimensions")
    dims = struct.unpack_from(f"{endian}{size // 4}i", buf, start)
    dtype, size, start, _ = _tag(buf, pos, endian)
    if dtype != _MI_INT8 or start + size > len(buf):
        raise _MatHeaderError("malformed variable name")
    return buf[start:start + size].decode("latin1"), tuple(dims)


def mat_variable_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Dimensions of every variable of a MATLAB v5/v7 file, read from the headers only.

    None for other files (v4 files are never compressed; v7.3 ones scipy refuses anyway).
    """
    with open(path, "rb") as fh:
        header = fh.read(_HEADER_BYTES)
        if len(header) < _HEADER_BYTES or header[126:128] not in (b"IM", b"MI"):
            return None
        endian = "<" if header[126:128] == b"IM" else ">"
        shapes: dict[str, tuple[int, ...]] = {}
        offset = _HEADER_BYTES
        while True:
            fh.seek(offset)
            tag = fh.read(8)
            if len(tag) < 8:
                return shapes
            mdtype, size, _, _ = _tag(tag, 0, endian)
            if mdtype == _MI_COMPRESSED:
                inflater, out, left = zlib.decompressobj(), b"", size
                while len(out) < _PEEK_BYTES and left > 0 and not inflater.eof:
                    chunk = fh.read(min(4096, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    out += inflater.decompress(inflater.unconsumed_tail + chunk, _PEEK_BYTES - len(out))
                name, dims = _matrix_header(out, endian)
                offset += 8 + size
            elif mdtype == _MI_MATRIX:
                name, dims = _matrix_header(tag + fh.read(min(size, _PEEK_BYTES)), endian)
                offset += 8 + size + (-size % 8)
            else:
                raise _MatHeaderError(f"unexpected top-level element type {mdtype}")
            shapes[name] = dims


def load_mat_variable(path: Path, variable: str, max_elements: int | None = None,
                      numeric: bool = True) -> np.ndarray:
    """One variable of a .mat file; BadImageError if the file, the variable or its size is unusable.

    ``max_elements`` refuses a larger variable before it is decompressed; ``numeric``
    refuses cells, structs and strings where an array of numbers is expected.
    """
    import scipy.io

    try:
        if max_elements is not None:
            size = path.stat().st_size
            if size > _max_file_bytes(max_elements):
                raise BadImageError(f"{path}: file too large: {size} bytes for at most {max_elements} values")
            try:
                shapes = mat_variable_shapes(path)
            except (_MatHeaderError, struct.error, zlib.error, UnicodeError) as exc:
                raise BadImageError(f"{path}: unreadable .mat file (header: {exc})") from None
            dims = (shapes or {}).get(variable)
            if dims is not None and (any(d < 0 for d in dims) or math.prod(dims) > max_elements):
                raise BadImageError(f"{path}: {variable!r} too large: {'x'.join(map(str, dims))} = "
                                    f"{math.prod(dims)} values, limit {max_elements}")
        data = scipy.io.loadmat(path, variable_names=[variable])
    except BadImageError:
        raise
    except NotImplementedError:
        # MATLAB v7.3 files are HDF5; scipy cannot read them.
        raise BadImageError(f"{path}: MATLAB v7.3 (HDF5) file; re-save it with -v7") from None
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:
        raise BadImageError(f"{path}: unreadable .mat file ({type(exc).__name__}: {exc})") from None
    if variable not in data:
        raise BadImageError(f"{path}: no variable {variable!r} in the .mat file")
    array = np.asarray(data[variable])
    if numeric and not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)
                        or np.issubdtype(array.dtype, np.floating)):
        raise BadImageError(f"{path}: {variable!r} is not an array of numbers ({array.dtype})")
    return array
