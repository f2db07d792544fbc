"""The inference kernels ``c3_kernels.c``, compiled on first use (``pipeline.ckernels``), and
the checked ctypes call that runs an op program on them."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.ckernels import CACHE_ENV, MARCH_ENV, NativeBuildError, cache_dir, compiler_flags  # noqa: F401
from pipeline.ckernels import library_path as _library_path
from pipeline.ckernels import open_library

SOURCE = Path(__file__).with_name("c3_kernels.c")


def library_path() -> Path:
    """Path of the compiled inference library for this compiler and CPU; builds it if missing."""
    return _library_path(SOURCE)


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The inference kernels as a ctypes library (compiled on first use)."""
    lib = open_library(SOURCE)
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
