"""Fused C kernels for ExtremeC3Net inference on CPU (batch 1), compiled on first use.

Why: the network's ~240 tiny operators cost far more in framework overhead than in
arithmetic (see ``pipeline.deploy``), so PyTorch, ONNX Runtime and OpenVINO all run it
at 6-10% of its FLOP bound. ``NativeExtremeC3Net(model)`` runs the same computation as
one call into ``c3_kernels.c``. Needs a C compiler (``$CC`` or ``cc``) at first use.
"""

from pipeline.native.build import NativeBuildError, load_library
from pipeline.native.extremec3net import NativeExtremeC3Net

__all__ = ["NativeBuildError", "NativeExtremeC3Net", "load_library"]
