"""ExtremeC3Net lowered onto the fused kernels: the same outputs as the eval-mode network.

Lowering (per input size, cached): every BN that follows a conv is folded into it; a BN
after a concatenation or a residual sum becomes a per-channel affine in the epilogue of
each conv that writes a slice of it, so no concatenation is ever copied; the classifier
is applied before the last upsampling (both linear, they commute; see
``ExtremeC3Net.fuse_for_inference``). Weights are read from the model when the runner is
made; later changes to the model are not seen.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from pipeline.deploy import batchnorm_affine, fold_bn_into_conv
from pipeline.models.extremec3net import AdvancedC3, BNPReLU, CoarseEncoder, ExtremeC3Net
from pipeline.native.build import load_library, run_program
from pipeline.native.program import Post, ProgramBuilder, Tensor, describe_record


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with which an eval-mode BN is x * scale + shift."""
    scale, shift = batchnorm_affine(bn)
    return _np(scale), _np(shift)


def prelu_slopes(act: nn.PReLU, channels: int) -> np.ndarray:
    return np.broadcast_to(_np(act.weight), (channels,)).astype(np.float32).copy()


def folded(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Weight and bias of ``bn(conv(x))`` (or of ``conv`` alone), folded as the deploy form folds."""
    if bn is not None:
        conv = fold_bn_into_conv(conv, bn)
    return _np(conv.weight), None if conv.bias is None else _np(conv.bias)


def bn_prelu_post(block: BNPReLU) -> Post:
    scale, shift = bn_affine(block.bn)
    return Post(scale, shift, prelu_slopes(block.act, len(scale)))


def lower_c3(b: ProgramBuilder, module: AdvancedC3, x: Tensor, out: Optional[Tensor] = None,
             then: Optional[Post] = None, out2: Optional[Tensor] = None) -> Tensor:
    """One advanced C3 module. ``then`` is a further BN+PReLU (a concatenation's) applied to
    ``out``, or, with ``out2``, to a copy in ``out2`` while ``out`` keeps the module's output.
    """
    reduce = module.reduce
    r = b.conv(x, _np(reduce.weight), stride=reduce.stride[0], pad=reduce.padding[0])
    channels = sum(branch.conv[-1].out_channels for branch in module.branches)
    out = out or b.alloc(channels, r.h, r.w)
    final = bn_prelu_post(module.out)
    start = 0
    for branch in module.branches:
        layers = list(branch.conv)
        y = r
        if branch.dilation > 1:  # (2d-1)x1 + BN + PReLU, then 1x(2d-1) + BN in the same op
            vertical, bn_v, act_v, horizontal, bn_h = layers[:5]
            w, bias = folded(vertical, bn_v)
            y = b.dwconv(y, w, bias, pad=vertical.padding, posts=[Post(prelu=prelu_slopes(act_v, r.c))],
                         then_row=folded(horizontal, bn_h))
        dilated, project = layers[-2:]
        y = b.dwconv(y, _np(dilated.weight), pad=dilated.padding, dilation=dilated.dilation)
        stop = start + project.out_channels
        # the 1x1 projection writes its slice of the concatenation: residual, BN + PReLU (+ then)
        posts = [final.channels(start, stop)] + ([then.channels(start, stop)] if then else [])
        b.conv(y, _np(project.weight), out=out.channels(start, stop), posts=posts,
               residual=x.channels(start, stop) if module.residual else None,
               out2=None if out2 is None else out2.channels(start, stop))
        start = stop
    return out


def lower_encoder(b: ProgramBuilder, enc: CoarseEncoder, image: Tensor, x0: Tensor) -> Tensor:
    """CoarseNet from ``x0``, the first level's output (stem conv + half image, after bn1)."""
    half = b.avgpool2(image)
    quarter = b.avgpool2(half)
    stem_channels = enc.level1.conv.out_channels
    b.affine(half, x0.channels(stem_channels, x0.c), bn_prelu_post(enc.bn1).channels(stem_channels, x0.c))

    c2 = enc.level2_0.out.bn.num_features
    bn2 = bn_prelu_post(enc.bn2)
    cat2 = b.alloc(2 * c2 + 3, -(-x0.h // 2), -(-x0.w // 2))
    x1_0 = lower_c3(b, enc.level2_0, x0, then=bn2.channels(c2, 2 * c2), out2=cat2.channels(c2, 2 * c2))
    x1 = x1_0
    for i, layer in enumerate(enc.level2):
        last = i == len(enc.level2) - 1
        x1 = lower_c3(b, layer, x1, out=cat2.channels(0, c2) if last else None,
                      then=bn2.channels(0, c2) if last else None)
    b.affine(quarter, cat2.channels(2 * c2, cat2.c), bn2.channels(2 * c2, cat2.c))

    c3 = enc.level3_0.out.bn.num_features
    bn3 = bn_prelu_post(enc.bn3)
    cat3 = b.alloc(2 * c3, cat2.h, cat2.w)
    x2_0 = lower_c3(b, enc.level3_0, cat2, then=bn3.channels(0, c3), out2=cat3.channels(0, c3))
    x2 = x2_0
    for i, layer in enumerate(enc.level3):
        last = i == len(enc.level3) - 1
        x2 = lower_c3(b, layer, x2, out=cat3.channels(c3, 2 * c3) if last else None,
                      then=bn3.channels(c3, 2 * c3) if last else None)
    return cat3


def lower_stems(b: ProgramBuilder, model: ExtremeC3Net, image: Tensor) -> tuple[Tensor, Tensor]:
    """FineNet's stem and CoarseNet's first level read the same image with the same 3x3/2
    geometry: one conv computes both (identity epilogue steps on the fine channels).
    Returns (fine stem output, CoarseNet's x0 with room for the half image after it)."""
    stem = model.encoder.level1
    fine_w = _np(model.fine_stem.weight)
    coarse_w, coarse_b = folded(stem.conv, stem.bn)
    nf, nc = len(fine_w), len(coarse_w)
    ones, zeros = np.ones(nf, np.float32), np.zeros(nf, np.float32)
    bn1 = bn_prelu_post(model.encoder.bn1).channels(0, nc)
    posts = [Post(prelu=np.concatenate([ones, prelu_slopes(stem.act, nc)])),
             Post(np.concatenate([ones, bn1.scale]), np.concatenate([zeros, bn1.shift]),
                  np.concatenate([ones, bn1.prelu]))]
    oh, ow = -(-image.h // 2), -(-image.w // 2)
    both = b.alloc(nf + nc + 3, oh, ow)
    b.conv(image, np.concatenate([fine_w, coarse_w]), np.concatenate([zeros, coarse_b]), stride=2, pad=1,
           out=both.channels(0, nf + nc), posts=posts)
    return both.channels(0, nf), both.channels(nf, both.c)


def lower_extremec3net(model: ExtremeC3Net, height: int, width: int) -> ProgramBuilder:
    """The whole network for one input size (model in eval mode)."""
    b = ProgramBuilder(height, width)
    image = b.input
    fine, x0 = lower_stems(b, model, image)
    fine = lower_c3(b, model.fine_c3, fine)
    features = lower_encoder(b, model.encoder, image, x0)
    w, bias = folded(model.coarse_proj, model.coarse_bn)
    coarse = b.conv(features, w, bias)
    merged = b.upsample(coarse, (fine.h, fine.w), add=fine, post=bn_prelu_post(model.head_act))
    logits = b.conv(merged, _np(model.classifier.weight),
                    None if model.classifier.bias is None else _np(model.classifier.bias))
    b.upsample(logits, (height, width), out=b.output(logits.c, height, width))
    return b


class NativeExtremeC3Net:
    """Inference-only ExtremeC3Net on the fused C kernels; call it like the eval-mode model.

    Input: a float tensor (N, 3, H, W) of any H, W >= 2, on any device; the output is a CPU
    float32 tensor (N, classes, H, W). Images run one at a time (the kernels are batch 1).
    ``threads`` defaults to torch's intra-op thread count. Each input size is lowered once
    and cached. Calls from several Python threads are serialised (one arena per size).
    """

    supported = (ExtremeC3Net,)

    def __init__(self, model: ExtremeC3Net, threads: Optional[int] = None):
        if not isinstance(model, self.supported):
            raise TypeError(f"NativeExtremeC3Net runs ExtremeC3Net, got {type(model).__name__}")
        self.model = copy.deepcopy(model).eval()
        self.num_classes = self.model.classifier.out_channels
        self.threads = threads
        load_library()  # compile now, so a build error surfaces here rather than at the first call
        self._programs: dict[tuple[int, int], tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def _program(self, height: int, width: int):
        key = (height, width)
        if key not in self._programs:
            with torch.no_grad():
                b = lower_extremec3net(self.model, height, width)
            program, arena_size = b.compacted()
            self._programs[key] = (program, torch.from_numpy(b.weight_blob()),
                                   torch.zeros(arena_size, dtype=torch.float32))
        return self._programs[key]

    def eval(self) -> "NativeExtremeC3Net":
        """No-op: it is inference-only already (lets it stand in where code calls model.eval())."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f"input must be at least 2x2, got {tuple(x.shape[2:])}")
        x = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
        n, _, height, width = x.shape
        with self._lock:
            program, weights, arena = self._program(height, width)
        out = torch.empty(n, self.num_classes, height, width)
        threads = self.threads or torch.get_num_threads()
        per_image = 3 * height * width
        with self._lock:
            for i in range(n):
                run_program(program, weights, arena, x.data_ptr() + 4 * i * per_image, out[i].data_ptr(), threads)
        return out

    def profile(self, height: int = 224, width: int = 224, runs: int = 50) -> list[dict]:
        """Median wall time of every op over ``runs`` calls (after one warm-up), in program order.

        The first op's time also holds the call's own overhead (ctypes, thread wake-up)."""
        with self._lock:
            return self._profile(height, width, runs)

    def _profile(self, height: int, width: int, runs: int) -> list[dict]:
        program, weights, arena = self._program(height, width)
        x = torch.randn(1, 3, height, width)
        out = torch.empty(1, self.num_classes, height, width)
        threads = self.threads or torch.get_num_threads()
        stamps = np.zeros((runs, len(program) + 1))
        for r in range(-1, runs):
            row = np.zeros(len(program))
            start = time.perf_counter()
            run_program(program, weights, arena, x.data_ptr(), out.data_ptr(), threads, row)
            if r >= 0:
                # omp_get_wtime and perf_counter share no epoch: rebase on the first op's end
                stamps[r, 1:] = row - row[0]
                stamps[r, 0] = -(time.perf_counter() - start - (row[-1] - row[0]))
        durations = np.median(np.diff(stamps, axis=1), axis=0)
        return [dict(describe_record(rec), ms=float(ms * 1e3)) for rec, ms in zip(program, durations)]
