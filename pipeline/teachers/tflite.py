"""Read a float TFLite model (a ``.tflite`` flatbuffer) into plain Python values.

Only what a PyTorch re-implementation needs: the tensors (shapes, and the constant ones as
float32 numpy arrays), the operators in execution order with their options decoded, and
the graph's inputs and outputs. ``DEQUANTIZE`` of a constant (MediaPipe stores its weights
as float16) is folded here, so the graph that comes back computes in float32 only.

The flatbuffer is decoded with the ``tflite`` package (TensorFlow's schema compiled to pure
Python over ``flatbuffers``); no TensorFlow, no interpreter. A file that is missing, is not
a TFLite model, or is cut short raises ``StageError`` naming the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import StageError

FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer

# tflite.Padding: SAME 0, VALID 1. TfLitePadding (custom ops' C structs): SAME 1, VALID 2.
_PADDING = {0: "SAME", 1: "VALID"}
_C_PADDING = {1: "SAME", 2: "VALID"}
# tflite.ActivationFunctionType
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


@dataclass(frozen=True)
class TfliteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # "FLOAT32", "INT32", ...
    data: np.ndarray | None = None  # constant tensors only (weights, sizes, axes)


@dataclass(frozen=True)
class TfliteOperator:
    kind: str  # builtin name ("CONV_2D") or the custom code ("Convolution2DTransposeBias")
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TfliteGraph:
    path: Path
    tensors: dict[int, TfliteTensor]
    operators: list[TfliteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def tensor(self, index: int) -> TfliteTensor:
        return self.tensors[index]


def read_tflite(path: str | os.PathLike) -> TfliteGraph:
    """The first subgraph of the model in ``path``, constants dequantized to float32."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: model file not found")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise StageError(f"{path}: not a TFLite model (no {FILE_IDENTIFIER.decode()} file identifier)")
    try:
        return _decode(path, data)
    except StageError:
        raise
    except Exception as exc:  # a truncated or damaged flatbuffer fails anywhere inside the decoder
        raise StageError(f"{path}: damaged TFLite model ({type(exc).__name__}: {exc})") from None


def _decode(path: Path, data: bytes) -> TfliteGraph:
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise StageError(f"{path}: TFLite model has no subgraph")
    builtin_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # schema >= 2.4 keeps codes above 127 in BuiltinCode, older ones in DeprecatedBuiltinCode
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite.BuiltinOperator.CUSTOM:
            codes.append(code.CustomCode().decode())
        else:
            codes.append(builtin_names.get(builtin, f"BUILTIN_{builtin}"))

    graph = model.Subgraphs(0)
    tensors: dict[int, TfliteTensor] = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        dtype = type_names.get(t.Type(), str(t.Type()))
        buffer = model.Buffers(t.Buffer())
        constant = None
        if buffer is not None and buffer.DataLength():
            raw = buffer.DataAsNumpy().tobytes()
            constant = _constant(raw, dtype, shape, t.Name().decode())
        tensors[i] = TfliteTensor(i, t.Name().decode(), shape, dtype, constant)

    operators: list[TfliteOperator] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        kind = codes[op.OpcodeIndex()]
        inputs = tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else ()
        outputs = tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        if kind == "DEQUANTIZE" and tensors[inputs[0]].data is not None:
            source, target = tensors[inputs[0]], tensors[outputs[0]]
            tensors[target.index] = TfliteTensor(target.index, target.name, target.shape, "FLOAT32",
                                                 source.data.astype(np.float32))
            continue
        operators.append(TfliteOperator(kind, inputs, outputs, _options(tflite, kind, op)))
    return TfliteGraph(path, tensors, operators,
                       tuple(int(x) for x in graph.InputsAsNumpy()),
                       tuple(int(x) for x in graph.OutputsAsNumpy()))


_NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64,
                "UINT8": np.uint8, "INT8": np.int8}


def _constant(raw: bytes, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if dtype not in _NUMPY_TYPES:
        raise ValueError(f"tensor {name}: constant of type {dtype} is not supported")
    values = np.frombuffer(raw, dtype=_NUMPY_TYPES[dtype])
    expected = int(np.prod(shape)) if shape else 1
    if values.size != expected:
        raise ValueError(f"tensor {name}: {values.size} values for shape {list(shape)}")
    return values.reshape(shape).copy()


def _table(op, options_class):
    table = op.BuiltinOptions()
    if table is None:
        raise ValueError(f"operator without its {options_class.__name__}")
    options = options_class()
    options.Init(table.Bytes, table.Pos)
    return options


def _options(tflite, kind: str, op) -> dict:
    """The options of one operator as plain values (only the kinds the selfie models use)."""
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = _table(op, tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)
        out = {"padding": _PADDING[o.Padding()], "stride": (o.StrideH(), o.StrideW()),
               "dilation": (o.DilationHFactor(), o.DilationWFactor()),
               "activation": _ACTIVATION[o.FusedActivationFunction()]}
        if kind == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = o.DepthMultiplier()
        return out
    if kind in ("ADD", "MUL", "SUB"):
        classes = {"ADD": tflite.AddOptions, "MUL": tflite.MulOptions, "SUB": tflite.SubOptions}
        return {"activation": _ACTIVATION[_table(op, classes[kind]).FusedActivationFunction()]}
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        o = _table(op, tflite.Pool2DOptions)
        return {"padding": _PADDING[o.Padding()], "stride": (o.StrideH(), o.StrideW()),
                "filter": (o.FilterHeight(), o.FilterWidth()),
                "activation": _ACTIVATION[o.FusedActivationFunction()]}
    if kind == "RESIZE_BILINEAR":
        o = _table(op, tflite.ResizeBilinearOptions)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    if kind == "MEAN":
        return {"keep_dims": bool(_table(op, tflite.ReducerOptions).KeepDims())}
    if kind == "Convolution2DTransposeBias":
        # MediaPipe's custom op reads its options as a C TfLiteTransposeConvParams:
        # {TfLitePadding padding; int stride_width; int stride_height;}
        raw = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
        if len(raw) < 12:
            raise ValueError(f"{kind}: custom options of {len(raw)} bytes, expected 12")
        padding, stride_w, stride_h = struct.unpack("<iii", raw[:12])
        return {"padding": _C_PADDING[padding], "stride": (stride_h, stride_w)}
    return {}
