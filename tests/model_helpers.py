"""Shared fixtures-in-code for the architecture tests (not a test module itself)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.models import build_model


def calibrated(name: str, size=(64, 64), seed: int = 0) -> nn.Module:
    """A network in eval mode with non-trivial BN statistics, affine terms and PReLU slopes,
    so that BN folding, exports and PReLU handling are really exercised."""
    torch.manual_seed(seed)
    model = build_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, nn.PReLU):
            nn.init.uniform_(m.weight, 0.05, 0.5)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, *size))  # running stats := batch stats
    return model.eval()


def bright_rectangle_batch(size: int, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noise images whose "person" (rows y0:y1, columns x0:x1) is brighter, and its class map."""
    y0, y1, x0, x1 = box
    image = torch.randn(2, 3, size, size)
    target = torch.zeros(2, size, size, dtype=torch.long)
    target[:, y0:y1, x0:x1] = 1
    image[:, :, y0:y1, x0:x1] += 1.5
    return image, target


def adam_losses(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], steps: int, lr: float) -> list[float]:
    """The loss before each of ``steps`` Adam steps on a fixed batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_of(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
