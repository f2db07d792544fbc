"""Which torch device a stage runs on: one spelling in params, one resolver for every stage.

Params name a device as ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or
``cuda:N``; anything else (``cdua``) is refused when params are loaded, and a CUDA device
on a machine without one is refused when the stage starts, both with one clear line.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from pipeline.errors import StageError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(value: str) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(check_device_name)]


def resolve_device(name: str) -> str:
    """The concrete device for a params value: ``auto`` picks CUDA when there is one."""
    import torch

    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StageError(f"device {name!r} requested but CUDA is not available on this machine "
                             "(use cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise StageError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return name
