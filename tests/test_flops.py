"""FLOP counter: layers whose counts are computed by hand, and the paper's ExtremeC3Net figures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.flops import BILINEAR_FLOPS_PER_OUTPUT, count_flops
from pipeline.models import build_model


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_conv_with_bias():
    # 8 x 10 x 10 outputs, each 3 x 3 x 3 = 27 MACs; the bias adds one op per output.
    c = count_flops(nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10))
    assert c.macs_espnetv2 == 800 * 27 + 0.5 * 800
    assert c.flops_all_ops == 2 * 800 * 27 + 800


def test_depthwise_and_strided_convs():
    dw = count_flops(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), (1, 6, 8, 8))
    assert dw.macs_espnetv2 == 6 * 64 * 9
    strided = count_flops(nn.Conv2d(4, 2, 3, stride=2, padding=1, bias=False), (1, 4, 9, 9))
    assert strided.macs_espnetv2 == 2 * 5 * 5 * 4 * 9  # 5 x 5 outputs per map
    dilated = count_flops(nn.Conv2d(2, 2, 3, padding=4, dilation=4, groups=2, bias=False), (1, 2, 7, 7))
    assert dilated.macs_espnetv2 == 2 * 49 * 9  # dilation spreads taps, it adds none


def test_transposed_conv_counts_every_input_pixel_times_kernel():
    c = count_flops(nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=False), (1, 4, 5, 5))
    assert c.macs_espnetv2 == 25 * 4 * 4 * 16
    grouped = count_flops(nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4, bias=False), (1, 4, 5, 5))
    assert grouped.macs_espnetv2 == 25 * 4 * 1 * 16


def test_linear_per_sample():
    c = count_flops(nn.Linear(10, 5), (3, 10))  # 3 samples: counts are per sample
    assert c.macs_espnetv2 == pytest.approx(50 + 2.5)
    assert c.flops_all_ops == pytest.approx(100 + 5)


def test_elementwise_layers_count_only_in_all_ops():
    shape = (1, 4, 5, 5)
    bn = count_flops(nn.BatchNorm2d(4), shape)
    assert (bn.macs_espnetv2, bn.flops_all_ops) == (0, 200)
    assert count_flops(nn.PReLU(4), shape).flops_all_ops == 100
    assert count_flops(nn.ReLU(inplace=True), shape).flops_all_ops == 100
    assert count_flops(Fn(lambda x: x + x), shape).flops_all_ops == 100
    assert count_flops(Fn(lambda x: torch.cat([x, x], 1)), shape).flops_all_ops == 0


def test_pooling_and_upsampling():
    pool = count_flops(Fn(lambda x: F.avg_pool2d(x, 2)), (1, 3, 8, 8))
    assert pool.flops_all_ops == 3 * 16 * 4
    up = count_flops(Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)),
                     (1, 3, 4, 4))
    assert up.flops_all_ops == 3 * 64 * BILINEAR_FLOPS_PER_OUTPUT
    assert up.macs_espnetv2 == 0


def test_counts_are_per_image_and_restore_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).train()
    one = count_flops(model, (1, 3, 8, 8))
    two = count_flops(model, (2, 3, 8, 8))
    assert one.macs_espnetv2 == two.macs_espnetv2 == 4 * 64 * 27
    assert one.flops_all_ops == two.flops_all_ops
    assert model.training


def test_extremec3net_matches_the_papers_table():
    c = count_flops(build_model("extremec3net"), (1, 3, 224, 224))
    assert round(c.macs_espnetv2 / 1e9, 3) == 0.128  # paper: 0.128 G by the ESPNetV2 counter
    assert c.flops_all_ops / 1e9 == pytest.approx(0.286, rel=0.01)  # paper: 0.286 G, all operations
