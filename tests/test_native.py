"""Fused C kernels (pipeline.native): every op against PyTorch, the whole ExtremeC3Net against
the eval-mode model, the arena compaction, the build, and the complexity stage's use of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.stages.complexity import make_runner
from pipeline.models import build_model
from pipeline.native import NativeBuildError, NativeExtremeC3Net
from pipeline.native import build as native_build
from pipeline.native.build import run_program
from pipeline.native.extremec3net import lower_extremec3net
from pipeline.native.program import ARENA, ARENA_REFS, FIELD, Post, ProgramBuilder, Tensor, describe_record

RNG = np.random.default_rng(0)


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def execute(builder: ProgramBuilder, x: torch.Tensor, out_shape, threads: int = 2, compact: bool = True):
    """Run a built program on one (C, H, W) image; the last op must write b.output(...)."""
    program, size = builder.compacted() if compact else (builder.program(), builder.arena_size)
    arena = torch.full((size,), float("nan"))  # any read of a never-written float would show
    out = torch.empty(out_shape)
    x = x.contiguous()
    run_program(program, torch.from_numpy(builder.weight_blob()), arena, x.data_ptr(), out.data_ptr(), threads)
    return out


def to_arena(b: ProgramBuilder) -> Tensor:
    """The input copied into the arena (1x1 convs and depth-wise convs read arena tensors)."""
    x = b.input
    return b.affine(x, b.alloc(x.c, x.h, x.w), Post(prelu=np.ones(x.c, np.float32)))


def randomise_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """BN running statistics and PReLU slopes away from their init, so folding them matters."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.3, 0.3, generator=gen)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(0.0, 0.5, generator=gen)
    return model.eval()


# --- single ops against PyTorch ---------------------------------------------------------

def affine_prelu(y: torch.Tensor, scale=None, shift=None, slopes=None) -> torch.Tensor:
    col = lambda a: torch.from_numpy(a)[:, None, None]  # noqa: E731
    if scale is not None:
        y = y * col(scale) + col(shift)
    return y if slopes is None else torch.where(y > 0, y, col(slopes) * y)


@pytest.mark.parametrize("k,stride,size", [(1, 1, (56, 56)), (1, 1, (7, 9)), (3, 2, (224, 224)),
                                           (3, 2, (57, 31)), (3, 1, (20, 70)), (3, 2, (2, 3))])
def test_conv_matches_torch_with_bias_two_epilogue_steps_and_a_second_output(k, stride, size):
    cin, cout = 5, 7
    x = torch.randn(cin, *size)
    w, bias = randn(cout, cin, k, k), randn(cout)
    s1, t1, a1, s2, t2, a2 = (randn(cout) for _ in range(6))
    conv = F.conv2d(x[None], torch.from_numpy(w), torch.from_numpy(bias), stride=stride, padding=k // 2)[0]
    first = affine_prelu(conv, s1, t1, a1)
    second = affine_prelu(first, s2, t2, a2)
    ho, wo = conv.shape[1:]
    b = ProgramBuilder(*size, in_channels=cin)
    src = to_arena(b) if k == 1 else b.input  # a k x k conv may read the program input directly
    both = b.output(2 * cout, ho, wo)
    b.conv(src, w, bias, stride=stride, pad=k // 2, out=both.channels(0, cout),
           posts=[Post(s1, t1, a1), Post(s2, t2, a2)], out2=both.channels(cout, 2 * cout))
    got = execute(b, x, (2 * cout, ho, wo))
    assert torch.allclose(got[:cout], first, atol=1e-4, rtol=1e-4)
    assert torch.allclose(got[cout:], second, atol=1e-4, rtol=1e-4)


def test_conv_residual_is_added_before_the_affine():
    cin, cout, size = 3, 6, (16, 20)
    x = torch.randn(cin, *size)
    w_res, w = randn(cout, cin, 1, 1), randn(cout, cin, 1, 1)
    scale, shift = randn(cout), randn(cout)
    b = ProgramBuilder(*size, in_channels=cin)
    xa = to_arena(b)
    res = b.conv(xa, w_res)
    b.conv(xa, w, residual=res, posts=[Post(scale, shift)], out=b.output(cout, *size))
    conv = lambda weight: F.conv2d(x[None], torch.from_numpy(weight))[0]  # noqa: E731
    expected = affine_prelu(conv(w) + conv(w_res), scale, shift)
    assert torch.allclose(execute(b, x, (cout, *size)), expected, atol=1e-4)


@pytest.mark.parametrize("kernel,dilation,size", [((3, 1), (1, 1), (56, 56)), ((1, 15), (1, 1), (56, 56)),
                                                  ((3, 3), (8, 8), (56, 56)), ((3, 3), (2, 2), (5, 70)),
                                                  ((7, 1), (1, 1), (3, 3)), ((3, 3), (1, 1), (112, 112)),
                                                  ((3, 3), (20, 20), (50, 61)), ((1, 41), (1, 1), (9, 30))])
def test_depthwise_conv_matches_torch(kernel, dilation, size):
    c = 4
    x = torch.randn(c, *size)
    w, bias, slopes = randn(c, 1, *kernel), randn(c), randn(c)
    pad = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    ref = F.conv2d(x[None], torch.from_numpy(w), torch.from_numpy(bias), padding=pad, dilation=dilation, groups=c)[0]
    ref = affine_prelu(ref, slopes=slopes)
    b = ProgramBuilder(*size, in_channels=c)
    b.dwconv(to_arena(b), w, bias, pad=pad, dilation=dilation, posts=[Post(prelu=slopes)], out=b.output(c, *size))
    assert torch.allclose(execute(b, x, (c, *size)), ref, atol=1e-4)


@pytest.mark.parametrize("k,size", [(3, (56, 56)), (15, (56, 56)), (7, (9, 100)), (5, (1, 2)), (41, (30, 20))])
def test_depthwise_second_stage_is_the_row_conv_after_the_column_conv(k, size):
    c = 3
    x = torch.randn(c, *size)
    wv, bv, slopes, wh, bh = randn(c, 1, k, 1), randn(c), randn(c), randn(c, 1, 1, k), randn(c)
    mid = F.conv2d(x[None], torch.from_numpy(wv), torch.from_numpy(bv), padding=(k // 2, 0), groups=c)
    mid = affine_prelu(mid[0], slopes=slopes)[None]
    ref = F.conv2d(mid, torch.from_numpy(wh), torch.from_numpy(bh), padding=(0, k // 2), groups=c)[0]
    b = ProgramBuilder(*size, in_channels=c)
    b.dwconv(to_arena(b), wv, bv, pad=(k // 2, 0), posts=[Post(prelu=slopes)], then_row=(wh, bh),
             out=b.output(c, *size))
    assert torch.allclose(execute(b, x, (c, *size)), ref, atol=1e-4)


@pytest.mark.parametrize("src,dst", [((56, 56), (112, 112)), ((7, 5), (15, 11)), ((1, 1), (4, 3)), ((3, 8), (3, 8))])
def test_upsample_matches_torch_bilinear_align_corners_plus_addend(src, dst):
    c = 3
    x = torch.randn(c, *src)
    add = torch.randn(c, *dst)
    scale, shift, slopes = randn(c), randn(c), randn(c)
    ref = affine_prelu(F.interpolate(x[None], size=dst, mode="bilinear", align_corners=True)[0] + add,
                       scale, shift, slopes)
    # the program's single input holds x then add; both are copied into the arena
    n_src = src[0] * src[1]
    b = ProgramBuilder(1, c * n_src + c * dst[0] * dst[1], in_channels=1)
    flat = b.input
    ident = lambda n: Post(prelu=np.ones(n, np.float32))  # noqa: E731
    xin = Tensor(flat.buf, 0, c, *src)
    addin = Tensor(flat.buf, c * n_src, c, *dst)
    xa = b.affine(xin, b.alloc(c, *src), ident(c))
    adda = b.affine(addin, b.alloc(c, *dst), ident(c))
    b.upsample(xa, dst, add=adda, post=Post(scale, shift, slopes), out=b.output(c, *dst))
    got = execute(b, torch.cat([x.reshape(-1), add.reshape(-1)]), (c, *dst))
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 224), (7, 5), (1, 1), (2, 3)])
def test_average_pooling_matches_torch_ceil_mode(size):
    x = torch.randn(3, *size)
    ref = F.avg_pool2d(x[None], 2, stride=2, ceil_mode=True)[0]
    b = ProgramBuilder(*size)
    pooled = b.avgpool2(b.input)
    b.affine(pooled, b.output(*ref.shape), Post(prelu=np.ones(3, np.float32)))
    assert torch.allclose(execute(b, x, ref.shape), ref, atol=1e-6)


# --- the builder ----------------------------------------------------------------------

def test_builder_refuses_what_the_kernels_cannot_run():
    b = ProgramBuilder(8, 8)
    with pytest.raises(ValueError, match="input channels"):
        b.conv(b.input, randn(4, 5, 1, 1))
    with pytest.raises(ValueError, match="arena tensor"):
        b.conv(b.input, randn(4, 3, 1, 1))  # 1x1 convs read whole 64-float rows
    with pytest.raises(ValueError, match="arena tensor"):
        b.dwconv(b.input, randn(3, 1, 3, 3), pad=(1, 1))
    x = b.alloc(3, 8, 8)
    with pytest.raises(ValueError, match="same"):
        b.dwconv(x, randn(3, 1, 3, 3), pad=(0, 0))
    with pytest.raises(ValueError, match="two epilogue steps"):
        b.conv(x, randn(3, 3, 1, 1), out2=b.alloc(3, 8, 8))


def test_compaction_shares_memory_only_between_tensors_that_are_never_live_together():
    model = build_model("extremec3net").eval()
    b = lower_extremec3net(model, 224, 224)
    program, size = b.compacted()
    assert size < b.arena_size / 3
    # every arena reference of the compacted program, as (op index, start, end) of its block
    starts = [o for o, _ in b._blocks]
    uses: dict[int, list[int]] = {}
    for i, (old, new) in enumerate(zip(b.program(), program)):
        for buf_field, off_field in ARENA_REFS:
            if old[FIELD[buf_field]] == ARENA and old[FIELD[off_field]] >= 0:
                block = int(np.searchsorted(starts, old[FIELD[off_field]], side="right") - 1)
                shift = int(new[FIELD[off_field]] - old[FIELD[off_field]])
                uses.setdefault(block, []).append((i, shift))
    placed = []
    for block, refs in uses.items():
        shifts = {s for _, s in refs}
        assert len(shifts) == 1, "every reference to one block moves together"
        offset, length = b._blocks[block]
        placed.append((min(i for i, _ in refs), max(i for i, _ in refs), offset + shifts.pop(), length))
    for a in range(len(placed)):
        for c in range(a + 1, len(placed)):
            (f1, l1, o1, n1), (f2, l2, o2, n2) = placed[a], placed[c]
            if f1 <= l2 and f2 <= l1:  # lifetimes overlap, so memory must not
                assert o1 + n1 <= o2 or o2 + n2 <= o1


def test_profile_labels_name_each_op():
    b = ProgramBuilder(8, 8)
    x = b.alloc(3, 8, 8)
    b.dwconv(x, randn(3, 1, 3, 1), pad=(1, 0), then_row=(randn(3, 1, 1, 3), None))
    b.conv(b.input, randn(4, 3, 3, 3), stride=2, pad=1)
    labels = [describe_record(r) for r in b.program()]
    assert labels[0]["op"] == "dwconv" and labels[0]["detail"] == "3x1 + 1x3"
    assert labels[1] == {"op": "conv", "detail": "3x3 s2", "in": "3x8x8", "out": "4x4x4"}


def test_unknown_op_code_is_refused_before_running():
    b = ProgramBuilder(4, 4)
    b.avgpool2(b.input)
    program = b.program()
    program[0, FIELD["op"]] = 99
    x, arena = torch.zeros(3, 4, 4), torch.zeros(max(b.arena_size, 16))
    with pytest.raises(ValueError, match="op record 0"):
        run_program(program, torch.from_numpy(b.weight_blob()), arena, x.data_ptr(), x.data_ptr(), 1)


# --- the whole network ------------------------------------------------------------------

@pytest.mark.parametrize("size", [(224, 224), (97, 131), (2, 2), (5, 3), (320, 240)])
def test_native_extremec3net_equals_the_eval_model(size):
    torch.manual_seed(0)
    model = randomise_statistics(build_model("extremec3net"))
    native = NativeExtremeC3Net(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)
    got = native(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()) + 1e-6)


def test_other_widths_depths_and_classes():
    torch.manual_seed(0)
    model = randomise_statistics(build_model("extremec3net", num_classes=2, p=2, q=3))
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x.float())
    got = NativeExtremeC3Net(model)(x)
    assert got.shape == (1, 2, 64, 48)
    assert torch.allclose(got, expected, atol=1e-5)


def test_thread_count_and_call_order_do_not_change_the_result():
    torch.manual_seed(0)
    model = randomise_statistics(build_model("extremec3net"))
    one, two = NativeExtremeC3Net(model, threads=1), NativeExtremeC3Net(model, threads=2)
    a, b = torch.randn(1, 3, 96, 64), torch.randn(1, 3, 40, 40)
    first = two(a)
    two(b)  # another size in between: programs and arenas are per size
    assert torch.equal(two(a), first)
    assert torch.equal(one(a), first)


def test_weights_are_a_snapshot_taken_at_construction():
    torch.manual_seed(0)
    model = build_model("extremec3net").eval()
    native = NativeExtremeC3Net(model)
    assert native.eval() is native  # stands in where code calls model.eval()
    x = torch.randn(1, 3, 32, 32)
    before = native(x)
    with torch.no_grad():
        model.classifier.weight.mul_(2)
    assert torch.equal(native(x), before)


def test_bad_inputs_are_clear_errors():
    native = NativeExtremeC3Net(build_model("extremec3net").eval())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        native(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        native(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 2x2"):
        native(torch.zeros(1, 3, 1, 32))
    with pytest.raises(TypeError, match="ExtremeC3Net"):
        NativeExtremeC3Net(build_model("extremec3net_stage1"))


def test_profile_covers_every_op_once():
    native = NativeExtremeC3Net(build_model("extremec3net").eval(), threads=1)
    rows = native.profile(64, 64, runs=3)
    program, _ = lower_extremec3net(native.model, 64, 64).compacted()
    assert len(rows) == len(program)
    assert all(r["ms"] >= 0 for r in rows)
    assert {r["op"] for r in rows} == {"conv", "dwconv", "upsample", "avgpool2", "affine"}


# --- build and stage integration -------------------------------------------------------------

def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(NativeBuildError, match="set CC"):
        native_build.library_path()


def test_library_is_built_once_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    first = native_build.library_path()
    stamp = first.stat().st_mtime_ns
    assert native_build.library_path() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_complexity_native_runtime_falls_back_to_torch_for_other_networks():
    runner, runtime = make_runner("extremec3net", "deploy", 64, runtime="native", threads=1)
    assert runtime == "native" and isinstance(runner, NativeExtremeC3Net)
    _, runtime = make_runner("extremec3net_stage1", "deploy", 64, runtime="native", threads=1)
    assert runtime == "torch"


@pytest.mark.parametrize("march", ["x86-64-v2", "x86-64-v3"])
def test_portable_builds_without_avx512_compute_the_same(march, tmp_path):
    """The kernels' vector code also compiles for SSE and AVX2 machines (checked in a child
    process, which loads only that build)."""
    import os
    import platform
    import subprocess
    import sys

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 targets only")
    script = (
        "import torch\n"
        "from pipeline.models import build_model\n"
        "from pipeline.native import NativeExtremeC3Net\n"
        "torch.manual_seed(0)\n"
        "m = build_model('extremec3net').eval()\n"
        "x = torch.randn(1, 3, 61, 45)\n"
        "with torch.no_grad():\n"
        "    ref = m(x)\n"
        "print(float((NativeExtremeC3Net(m, threads=2)(x) - ref).abs().max() / ref.abs().max()))\n")
    env = {**os.environ, native_build.MARCH_ENV: march, native_build.CACHE_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5
    assert len(list(tmp_path.glob("c3_kernels-*.so"))) == 1


def test_record_fields_match_the_c_enum():
    """program.FIELDS and the C kernels' F_* enum must list the same fields in the same order."""
    import re

    source = native_build.SOURCE.read_text()
    enum = source[source.index("F_OP,"):source.index("F_RECORD")]
    names = [name.lower() for name in re.findall(r"F_([A-Z0-9_]+)", enum)]
    from pipeline.native.program import FIELDS, RECORD
    assert names == list(FIELDS)
    assert int(re.search(r"F_RECORD = (\d+)", source).group(1)) == RECORD >= len(FIELDS)
