"""One registry for every segmentation network, so stages pick an architecture by name.

Each network lives in its own file and registers a builder::

    @register("extremec3net", paper_params=37_738, input_size=224)
    def build_extremec3net(num_classes: int = 1, **kwargs) -> nn.Module: ...

``build_model(name, **kwargs)`` builds one; ``MODELS`` lists them with their metadata
(used by the parameter-count tests and the comparison table).

Conventions every network follows:
- ``forward(x)`` takes (N, 3, H, W) normalised RGB and returns logits (N, C, H, W) at
  the input resolution. C = 1 means one foreground logit; C >= 2 means per-class logits
  with class 1 = person for portraits.
- A network with auxiliary outputs (deep supervision) keeps ``forward`` returning the
  main logits and offers ``forward_with_aux(x) -> (logits, [aux_logits, ...])``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    paper_params: int | None = None  # parameter count the paper (or official code) gives
    paper_params_kwargs: dict = field(default_factory=dict)  # builder kwargs for that count
    input_size: int = 224
    description: str = ""


MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, paper_params: int | None = None, paper_params_kwargs: dict | None = None,
             input_size: int = 224, description: str = ""):
    def wrap(builder: Callable[..., nn.Module]):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelSpec(name, builder, paper_params, dict(paper_params_kwargs or {}), input_size,
                                 description or (builder.__doc__ or "").strip().split("\n")[0])
        return builder

    return wrap


def _import_all() -> None:
    import pipeline.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry",) and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def available_models() -> list[str]:
    _import_all()
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    _import_all()
    if name not in MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, **kwargs) -> nn.Module:
    return get_spec(name).builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def foreground_logit(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) score whose sign says person/background, for 1- or 2+-channel outputs."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]
