"""Make torchvision importable beside a CPU-only torch whose ops it cannot load.

PyPI's torchvision wheels are CUDA builds; beside the CPU torch their native library
fails to load and ``import torchvision`` dies registering ``torchvision::nms``
(pytorch/vision#9085). timm, segmentation-models-pytorch and facenet-pytorch all import
torchvision. Before that import we check whether the native library loads; only if it
does not, we register a pure-torch ``nms`` with the same semantics as the CPU kernel.
On a normal install (native ops load) this module does nothing.

Call ``ensure_torchvision()`` before importing any of those libraries.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_state: dict[str, object] = {"done": False, "shimmed": False}


def _native_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to shim; importers will fail on their own
    import glob

    import torch

    libs = []
    for location in spec.submodule_search_locations:
        libs += glob.glob(os.path.join(location, "_C*.so")) + glob.glob(os.path.join(location, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return True


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy NMS: keep the highest score, drop boxes overlapping it by more than the threshold.

    Same contract as ``torchvision.ops.nms``: boxes (N, 4) as x1, y1, x2, y2; returns the
    kept indices sorted by decreasing score.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].to(torch.float64 if boxes.dtype == torch.float64 else torch.float32)
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    overlaps = (iou > iou_threshold).cpu()
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def _unsupported(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(f"torchvision::{name} needs torchvision's native ops, which do not load here")

    return kernel


def ensure_torchvision() -> bool:
    """Return True when a shim was installed, False when torchvision works natively."""
    if _state["done"]:
        return bool(_state["shimmed"])
    _state["done"] = True
    if "torchvision" in sys.modules or _native_ops_load():
        return False
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CompositeExplicitAutograd")
    # torchvision registers a fake kernel for qnms unconditionally at import: the op must
    # exist. Quantised NMS is never used here, so it only says so if called.
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("qnms", _unsupported("qnms"), "CompositeExplicitAutograd")
    _state["lib"] = lib  # the registration lives as long as this object

    import torchvision.extension as ext

    ext._has_ops = lambda: True  # torchvision checks this before calling its ops
    _state["shimmed"] = True
    return True
