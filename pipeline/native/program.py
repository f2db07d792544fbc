"""Build the op records ``c3_kernels.c`` executes: tensors are offsets, weights one blob.

A network is lowered once per input size into (records, weight blob, arena size). Tensors
are planar NCHW at batch 1 and live in buffer 1 (the arena), 2 (the input) or 3 (the
output); weights live in buffer 0. A channel slice of a tensor is the same buffer at a
later offset, which is how concatenations cost nothing. Every arena tensor is followed
by ``SLACK`` floats because kernels read whole vectors and GEMM tiles (up to 64 floats).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

WEIGHTS, ARENA, INPUT, OUTPUT = 0, 1, 2, 3
SLACK = 64
ALIGN = 16
TILE_CHANNELS = (6, 4)  # register tiles of gemm_tile6 / gemm_tile4, fewest padded channels wins
RECORD = 40

OP_CONV, OP_DWCONV, OP_UPSAMPLE, OP_AVGPOOL2, OP_AFFINE = 1, 2, 3, 4, 5
FIELDS = ("op in_buf in_off in_c in_h in_w out_buf out_off out_c out_h out_w kh kw stride ph pw dh dw "
          "weight bias res_buf res_off aff1 prelu1 aff2 prelu2 tile_c in2_buf in2_off out2_buf out2_off "
          "weight2 bias2 k2 p2").split()
FIELD = {name: i for i, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Tensor:
    """A planar C x H x W float32 tensor at ``offset`` floats into buffer ``buf``."""

    buf: int
    offset: int
    c: int
    h: int
    w: int

    def channels(self, start: int, stop: int) -> "Tensor":
        if not 0 <= start < stop <= self.c:
            raise ValueError(f"channel slice {start}:{stop} of a {self.c}-channel tensor")
        return replace(self, offset=self.offset + start * self.h * self.w, c=stop - start)


@dataclass(frozen=True)
class Post:
    """One epilogue step after bias/residual: per-channel affine (scale, shift) then PReLU slopes."""

    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    prelu: Optional[np.ndarray] = None

    def channels(self, start: int, stop: int) -> "Post":
        cut = (lambda a: None if a is None else a[start:stop])
        return Post(cut(self.scale), cut(self.shift), cut(self.prelu))


OP_NAMES = {OP_CONV: "conv", OP_DWCONV: "dwconv", OP_UPSAMPLE: "upsample", OP_AVGPOOL2: "avgpool2",
            OP_AFFINE: "affine"}


ARENA_REFS = (("in_buf", "in_off"), ("out_buf", "out_off"), ("res_buf", "res_off"), ("in2_buf", "in2_off"),
              ("out2_buf", "out2_off"))


def describe_record(rec: np.ndarray) -> dict:
    """What an op record does, in words a profile table can show."""
    f = {name: int(rec[i]) for i, name in enumerate(FIELDS)}
    kind = OP_NAMES.get(f["op"], f"op{f['op']}")
    detail = ""
    if f["op"] in (OP_CONV, OP_DWCONV):
        detail = f"{f['kh']}x{f['kw']}"
        if f["op"] == OP_CONV and f["stride"] > 1:
            detail += f" s{f['stride']}"
        if f["op"] == OP_DWCONV and max(f["dh"], f["dw"]) > 1:
            detail += f" d{max(f['dh'], f['dw'])}"
        if f["op"] == OP_DWCONV and f["weight2"] >= 0:
            detail += f" + 1x{f['k2']}"
    return {"op": kind, "detail": detail, "in": f"{f['in_c']}x{f['in_h']}x{f['in_w']}",
            "out": f"{f['out_c']}x{f['out_h']}x{f['out_w']}"}


def upsample_columns(in_size: int, out_size: int) -> np.ndarray:
    """Column table of a bilinear upsampling with align_corners=True, as PyTorch computes it
    (float32): per block of 16 output columns, its first source column (int32 bits); then per
    lane, its source column relative to that (int32 bits; padding lanes repeat the block's
    last column); then per lane, the weight of the column to its right."""
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = scale * np.arange(out_size, dtype=np.float32)
    left = np.minimum(src.astype(np.int32), in_size - 1)
    frac = (src - left.astype(np.float32)).astype(np.float32)
    blocks = -(-out_size // 16)
    pad = blocks * 16 - out_size
    left = np.concatenate([left, np.full(pad, left[-1], np.int32)]).reshape(blocks, 16)
    frac = np.concatenate([frac, np.zeros(pad, np.float32)])
    first = left[:, 0].copy()
    return np.concatenate([first.view(np.float32), (left - first[:, None]).reshape(-1).view(np.float32), frac])


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class ProgramBuilder:
    """Accumulates weights, arena tensors and op records for one input size."""

    def __init__(self, height: int, width: int, in_channels: int = 3):
        self.records: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        self._weight_size = 0
        self.arena_size = 0
        self._blocks: list[tuple[int, int]] = []  # (offset, floats) of every arena allocation
        self.input = Tensor(INPUT, 0, in_channels, height, width)

    # --- storage -------------------------------------------------------------------
    def const(self, values: np.ndarray) -> int:
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        offset = self._weight_size
        padded = -(-flat.size // ALIGN) * ALIGN
        self._weights.append(np.pad(flat, (0, padded - flat.size)))
        self._weight_size += padded
        return offset

    def _reserve(self, floats: int) -> int:
        offset = self.arena_size
        size = -(-(floats + SLACK) // ALIGN) * ALIGN
        self._blocks.append((offset, size))
        self.arena_size += size
        return offset

    def alloc(self, c: int, h: int, w: int) -> Tensor:
        return Tensor(ARENA, self._reserve(c * h * w), c, h, w)

    def output(self, c: int, h: int, w: int) -> Tensor:
        return Tensor(OUTPUT, 0, c, h, w)

    def weight_blob(self) -> np.ndarray:
        return np.concatenate(self._weights) if self._weights else np.zeros(ALIGN, np.float32)

    def program(self) -> np.ndarray:
        """The records as built: every arena allocation at its own offset."""
        return np.stack(self.records).astype(np.int64) if self.records else np.zeros((0, RECORD), np.int64)

    def compacted(self) -> tuple[np.ndarray, int]:
        """(records, arena floats) with allocations whose lifetimes do not overlap sharing memory.

        A block lives from the first to the last op that reads or writes it (both ends
        inclusive, so an op's inputs never share memory with its outputs). Reuse keeps the
        working set in the CPU's L2 instead of streaming a fresh buffer per op.
        """
        program = self.program()
        starts = [offset for offset, _ in self._blocks]
        first, last = {}, {}
        refs = []  # (record, field pair, block)
        for i, rec in enumerate(program):
            for buf_field, off_field in ARENA_REFS:
                if rec[FIELD[buf_field]] == ARENA and rec[FIELD[off_field]] >= 0:
                    block = bisect_right(starts, int(rec[FIELD[off_field]])) - 1
                    refs.append((i, off_field, block))
                    first.setdefault(block, i)
                    last[block] = i
        placed: list[tuple[int, int, int]] = []  # (new offset, size, last use)
        new_offset = {}
        for block in sorted(first, key=lambda b: (first[b], b)):
            size = self._blocks[block][1]
            live = sorted((o, sz) for o, sz, end in placed if end >= first[block])
            offset = 0
            for o, sz in live:
                if offset + size <= o:
                    break
                offset = max(offset, o + sz)
            new_offset[block] = offset
            placed.append((offset, size, last[block]))
        for i, off_field, block in refs:
            program[i, FIELD[off_field]] += new_offset[block] - self._blocks[block][0]
        size = max((o + sz for o, sz, _ in placed), default=0)
        return program, size

    # --- records -------------------------------------------------------------------
    def _record(self, op: int, x: Tensor, out: Tensor, **fields) -> None:
        rec = np.full(RECORD, -1, dtype=np.int64)
        rec[FIELD["op"]] = op
        for prefix, t in (("in", x), ("out", out)):
            rec[FIELD[f"{prefix}_buf"]], rec[FIELD[f"{prefix}_off"]] = t.buf, t.offset
            rec[FIELD[f"{prefix}_c"]], rec[FIELD[f"{prefix}_h"]], rec[FIELD[f"{prefix}_w"]] = t.c, t.h, t.w
        for name, value in fields.items():
            rec[FIELD[name]] = value
        self.records.append(rec)

    @staticmethod
    def _second_output(out2: Optional[Tensor], out: Tensor, posts: Sequence[Post]) -> dict:
        if out2 is None:
            return {}
        if (out2.c, out2.h, out2.w) != (out.c, out.h, out.w):
            raise ValueError("the second output's shape differs from the first")
        if len(posts) != 2:
            raise ValueError("a second output needs two epilogue steps: one for both, one for out2 alone")
        return {"out2_buf": out2.buf, "out2_off": out2.offset}

    def _post_fields(self, posts: Sequence[Post], channels: int) -> dict:
        if len(posts) > 2:
            raise ValueError("at most two affine/PReLU steps fit in an epilogue")
        fields = {}
        for i, post in enumerate(posts, start=1):
            if post.scale is not None:
                if len(post.scale) != channels or len(post.shift) != channels:
                    raise ValueError(f"affine of {len(post.scale)} channels on a {channels}-channel output")
                fields[f"aff{i}"] = self.const(np.concatenate([post.scale, post.shift]))
            if post.prelu is not None:
                if len(post.prelu) != channels:
                    raise ValueError(f"PReLU of {len(post.prelu)} channels on a {channels}-channel output")
                fields[f"prelu{i}"] = self.const(post.prelu)
        return fields

    def conv(self, x: Tensor, weight: np.ndarray, bias: Optional[np.ndarray] = None, *, stride: int = 1,
             pad: int = 0, out: Optional[Tensor] = None, residual: Optional[Tensor] = None,
             posts: Sequence[Post] = (), out2: Optional[Tensor] = None) -> Tensor:
        """Convolution with groups=1; ``weight`` is (Cout, Cin, kh, kw) as in PyTorch.

        With ``out2``, ``out`` receives the result after ``posts[0]`` and ``out2`` the same
        after ``posts[1]`` too (a raw tensor and its BN+PReLU'd copy in a concatenation).
        """
        cout, cin, kh, kw = weight.shape
        if cin != x.c:
            raise ValueError(f"conv expects {cin} input channels, got {x.c}")
        pointwise = kh == kw == 1 and stride == 1 and pad == 0
        if pointwise and x.buf != ARENA:
            raise ValueError("a 1x1 conv reads whole 64-float rows: its input must be an arena tensor")
        ho, wo = conv_output_size(x.h, kh, stride, pad), conv_output_size(x.w, kw, stride, pad)
        out = out or self.alloc(cout, ho, wo)
        if (out.c, out.h, out.w) != (cout, ho, wo):
            raise ValueError(f"conv writes {cout}x{ho}x{wo} into a {out.c}x{out.h}x{out.w} tensor")
        if residual is not None and (residual.c, residual.h, residual.w) != (cout, ho, wo):
            raise ValueError("residual shape differs from the conv output")
        k = cin * kh * kw
        tile = min(TILE_CHANNELS, key=lambda t: -(-cout // t) * t)
        blocks = -(-cout // tile)
        packed = np.zeros((blocks * tile, k), np.float32)
        packed[:cout] = weight.reshape(cout, k)
        # k-major within each block of output channels, as gemm_tile4/6 read it
        packed = packed.reshape(blocks, tile, k).transpose(0, 2, 1)
        fields = dict(kh=kh, kw=kw, stride=stride, ph=pad, pw=pad, weight=self.const(packed), tile_c=tile,
                      **self._post_fields(posts, cout))
        if bias is not None:
            fields["bias"] = self.const(bias)
        if residual is not None:
            if residual.buf != ARENA:
                raise ValueError("a residual is read 16 floats at a time: it must be an arena tensor")
            fields["res_buf"], fields["res_off"] = residual.buf, residual.offset
        fields.update(self._second_output(out2, out, posts))
        self._record(OP_CONV, x, out, **fields)
        return out

    def dwconv(self, x: Tensor, weight: np.ndarray, bias: Optional[np.ndarray] = None, *,
               pad: tuple[int, int], dilation: tuple[int, int] = (1, 1), out: Optional[Tensor] = None,
               posts: Sequence[Post] = (), then_row: Optional[tuple[np.ndarray, Optional[np.ndarray]]] = None
               ) -> Tensor:
        """Depth-wise conv, stride 1, 'same' output size; ``weight`` is (C, 1, kh, kw).

        ``then_row`` = (weight (C, 1, 1, k2), bias) adds a second depth-wise stage, 1 x k2 with
        'same' padding, applied to each finished row before it is stored: ``posts[0]`` then
        belongs to the first stage and ``posts[1]`` to the output.
        """
        if x.buf != ARENA:
            raise ValueError("a depth-wise conv reads whole 16-float runs: its input must be an arena tensor")
        c, one, kh, kw = weight.shape
        if one != 1 or c != x.c:
            raise ValueError(f"depth-wise weight {weight.shape} does not match {x.c} channels")
        if any(2 * p != d * (k - 1) for p, d, k in zip(pad, dilation, (kh, kw))):
            raise ValueError("only 'same'-size depth-wise convs are supported")
        out = out or self.alloc(x.c, x.h, x.w)
        fields = dict(kh=kh, kw=kw, stride=1, ph=pad[0], pw=pad[1], dh=dilation[0], dw=dilation[1],
                      weight=self.const(weight), **self._post_fields(posts, c))
        if bias is not None:
            fields["bias"] = self.const(bias)
        if then_row is not None:
            weight2, bias2 = then_row
            if weight2.shape[:3] != (c, 1, 1) or weight2.shape[3] % 2 == 0:
                raise ValueError(f"second stage weight {weight2.shape}: expected ({c}, 1, 1, odd k)")
            fields.update(weight2=self.const(weight2), k2=weight2.shape[3], p2=weight2.shape[3] // 2)
            if bias2 is not None:
                fields["bias2"] = self.const(bias2)
        self._record(OP_DWCONV, x, out, **fields)
        return out

    def upsample(self, x: Tensor, size: tuple[int, int], *, add: Optional[Tensor] = None,
                 out: Optional[Tensor] = None, post: Optional[Post] = None) -> Tensor:
        """Bilinear, align_corners=True, then + ``add``, then ``post``."""
        out = out or self.alloc(x.c, *size)
        if (out.c, out.h, out.w) != (x.c, *size):
            raise ValueError("upsample output shape mismatch")
        fields = self._post_fields([post] if post else [], x.c)
        fields["weight"] = self.const(upsample_columns(x.w, size[1]))
        if add is not None:
            if (add.c, add.h, add.w) != (x.c, *size):
                raise ValueError("upsample: the added tensor's shape differs from the output")
            if add.buf != ARENA:
                raise ValueError("upsample reads its addend 16 floats at a time: it must be an arena tensor")
            fields["in2_buf"], fields["in2_off"] = add.buf, add.offset
        self._record(OP_UPSAMPLE, x, out, **fields)
        return out

    def avgpool2(self, x: Tensor) -> Tensor:
        """2x2 average pooling, stride 2, ceil mode."""
        out = self.alloc(x.c, -(-x.h // 2), -(-x.w // 2))
        self._record(OP_AVGPOOL2, x, out)
        return out

    def affine(self, x: Tensor, out: Tensor, post: Post) -> Tensor:
        """Copy ``x`` into ``out`` through a per-channel affine + PReLU."""
        if (out.c, out.h, out.w) != (x.c, x.h, x.w):
            raise ValueError("affine output shape mismatch")
        self._record(OP_AFFINE, x, out, **self._post_fields([post], x.c))
        return out
