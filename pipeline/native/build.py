"""Compile and load ``c3_kernels.c`` on first use, cached per source, flags and CPU.

A plain C compiler (``$CC``, else ``cc``; GCC, for its vector extensions) is all it
needs: no PyTorch headers, so the build takes about a second. ``-march=native`` makes the
library specific to this CPU, so the cache key includes the CPU's model and flags; a cache
copied to another machine is rebuilt, never run. ``PORTRAIT_CURATION_NATIVE_MARCH`` sets
another ``-march`` (``x86-64-v3``: AVX2 machines; ``x86-64-v2``: any recent x86). The library is loaded after torch: both then share torch's OpenMP
runtime (same soname ``libgomp.so.1``), so the two thread pools do not compete for cores.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

import torch  # noqa: F401  (loaded first: the kernels then share its OpenMP runtime)

SOURCE = Path(__file__).with_name("c3_kernels.c")
BASE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
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


def library_path() -> Path:
    """Path of the compiled library for this source, compiler and CPU; builds it if missing."""
    compiler = _compiler()
    key = hashlib.sha256()
    flags = compiler_flags()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), _compiler_version(compiler).encode(),
                 _cpu_identity().encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    target = cache_dir() / f"c3_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".c3_kernels-", suffix=".so", dir=target.parent)
    os.close(fd)
    command = [*compiler, *flags, str(SOURCE), "-o", tmp_name, "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling the native kernels failed ({' '.join(command)}):\n{done.stderr}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The kernels as a ctypes library (compiled on first use)."""
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeBuildError(f"loading {path} failed ({exc}); delete it to rebuild") from exc
    lib.c3_run.restype = ctypes.c_int
    lib.c3_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.c3_record_size.restype = ctypes.c_int
    return lib


def run_program(program: np.ndarray, weights: torch.Tensor, arena: torch.Tensor, input_ptr: int, output_ptr: int,
                threads: int, seconds: Optional[np.ndarray] = None) -> None:
    """Run op records (``program.ProgramBuilder``) once: the ctypes boundary, checked.

    ``weights`` and ``arena`` are contiguous float32 CPU tensors; the pointers are raw
    addresses of the input and output (float32, planar). ``seconds`` (float64, one per
    record) receives a timestamp after each op.
    """
    if program.dtype != np.int64 or program.ndim != 2 or program.shape[1] != load_library().c3_record_size():
        raise ValueError(f"program must be int64 records of {load_library().c3_record_size()} fields, "
                         f"got {program.dtype} {program.shape}")
    for t in (weights, arena):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError("weights and arena must be contiguous float32 CPU tensors")
    if seconds is not None and (seconds.dtype != np.float64 or len(seconds) < len(program)):
        raise ValueError("seconds must be a float64 array with one slot per record")
    program = np.ascontiguousarray(program)
    status = load_library().c3_run(program.ctypes.data, len(program), weights.data_ptr(), arena.data_ptr(),
                                   input_ptr, output_ptr, threads, None if seconds is None else seconds.ctypes.data)
    if status < 0:
        raise MemoryError("the native kernels could not allocate their per-thread scratch")
    if status:
        raise ValueError(f"op record {status - 1} has an unknown op code")
