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

Builder arguments come from params files and checkpoints, so they are checked before a
network is built for real (``check_model_kwargs``): each key must be an argument of the
builder (a builder's ``**kwargs`` is followed into the class it forwards them to), each
value must have the annotated type, and the network must build (on the meta device: no
memory, no time) with a plausible size.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import math
import pkgutil
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Mapping

from pydantic import AfterValidator

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
    if not name or "." in name or "/" in name:
        # DVC names a stage's params by dotted paths (train.model_kwargs.<arch>) and the
        # name becomes folder and file names: a dot or a slash would break both.
        raise ValueError(f"architecture name {name!r} must be non-empty, without '.' or '/'")

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


def check_architecture(name: str) -> str:
    """Pydantic-style check: ``name`` is a registered architecture."""
    known = available_models()
    if name not in known:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(known)}")
    return name


Architecture = Annotated[str, AfterValidator(check_architecture)]

MAX_PARAMETERS = 2_000_000_000  # far above every paper's network; beyond it a width or depth is a typo
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


_NO_VALUE = object()


class ModelArgumentError(ValueError):
    """Builder arguments a network refuses; ``argument`` names the bad one (None: the combination).

    ``reason`` is the message without the offending value, for callers that show it themselves.
    """

    def __init__(self, argument: str | None, reason: str, value: Any = _NO_VALUE):
        super().__init__(reason if value is _NO_VALUE else f"{reason} (got {value!r})")
        self.argument, self.reason, self.value = argument, reason, value


def _callable_parameters(target: Callable) -> list[inspect.Parameter]:
    return list(inspect.signature(target).parameters.values())


def _forwarded_parameters(builder: Callable, var_keyword: str) -> dict[str, inspect.Parameter] | None:
    """The arguments a builder's ``**kwargs`` may hold: those of the call it forwards them to,
    less the ones that call already passes. None when the call cannot be found."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(builder)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if not any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == var_keyword
                   for k in node.keywords):
            continue
        target = builder.__globals__.get(node.func.id)
        if target is None:
            return None
        params = _callable_parameters(target)
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)][:len(node.args)]
        passed = {k.arg for k in node.keywords if k.arg is not None} | {p.name for p in positional}
        return {p.name: p for p in params if p.kind in _KEYWORD_KINDS and p.name not in passed}
    return None


@functools.lru_cache(maxsize=None)
def _builder_arguments(builder: Callable) -> dict[str, inspect.Parameter] | None:
    params = _callable_parameters(builder)
    own = {p.name: p for p in params if p.kind in _KEYWORD_KINDS}
    var_keyword = next((p.name for p in params if p.kind == inspect.Parameter.VAR_KEYWORD), None)
    if var_keyword is None:
        return own
    forwarded = _forwarded_parameters(builder, var_keyword)
    return None if forwarded is None else {**forwarded, **own}


def builder_arguments(name: str) -> dict[str, inspect.Parameter] | None:
    """Keyword arguments the builder of ``name`` accepts (None: it takes any, unresolved ``**kwargs``)."""
    return _builder_arguments(get_spec(name).builder)


def _annotation_kind(parameter: inspect.Parameter | None) -> tuple[str, bool]:
    """(scalar type name or "", whether None is allowed) of a parameter's annotation."""
    annotation = inspect.Parameter.empty if parameter is None else parameter.annotation
    if annotation is inspect.Parameter.empty:
        return "", False
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = [part.strip() for part in text.split("|")]
    others = [part for part in parts if part != "None"]
    return (others[0] if len(others) == 1 else ""), len(others) < len(parts)


def _check_type(name: str, argument: str, value: Any, parameter: inspect.Parameter | None) -> None:
    """The annotated scalar types (int, float, bool, str); other annotations are left to the builder."""
    kind, optional = _annotation_kind(parameter)
    if argument == "num_classes":
        kind, optional = "int", False  # every network's convention: a whole number of output channels
    if value is None and optional:
        return
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ModelArgumentError(argument, f"argument of {name} must be an integer", value)
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ModelArgumentError(argument, f"argument of {name} must be a finite number", value)
    if kind == "bool" and not isinstance(value, bool):
        raise ModelArgumentError(argument, f"argument of {name} must be true or false", value)
    if kind == "str" and not isinstance(value, str):
        raise ModelArgumentError(argument, f"argument of {name} must be a string", value)
    if argument == "num_classes" and value < 1:
        raise ModelArgumentError(argument, f"argument of {name} must be >= 1", value)


def check_argument_names(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse builder arguments that ``name`` does not take or of the wrong type, without building it.

    The cheap half of ``check_model_kwargs``: for the kwargs of a network that is not trained
    now, a typo is still a typo, but building every listed network would make loading params slow.
    Raises ModelArgumentError (a ValueError) naming the argument; KeyError for an unknown ``name``.
    """
    get_spec(name)
    if not isinstance(kwargs, Mapping):
        raise ModelArgumentError(None, f"arguments of {name} must be a mapping of name: value (got {kwargs!r})")
    known = builder_arguments(name)
    for argument, value in kwargs.items():
        if not isinstance(argument, str):
            raise ModelArgumentError(str(argument), f"argument names of {name} must be strings (got {argument!r})")
        if known is not None and argument not in known:
            raise ModelArgumentError(argument, f"unknown argument of {name} (known: {', '.join(sorted(known))})")
        _check_type(name, argument, value, (known or {}).get(argument))


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse builder arguments that ``name`` does not take, of the wrong type, or that do not build.

    Raises ModelArgumentError (a ValueError) naming the argument; KeyError for an unknown ``name``.
    """
    check_argument_names(name, kwargs)
    _check_builds(name, dict(kwargs))


_CHECKED: dict[tuple, str | None] = {}  # (builder, kwargs, ...) -> None, or why it fails


def _cached_check(name: str, kwargs: dict[str, Any], extra: tuple, check: Callable[[], str | None]) -> None:
    key = (get_spec(name).builder, json.dumps(kwargs, sort_keys=True, default=repr), *extra)
    if key not in _CHECKED:
        _CHECKED[key] = check()
    if _CHECKED[key] is not None:
        raise ModelArgumentError(None, _CHECKED[key])


def _meta_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The network on the meta device: shapes only, so any size builds at once and in no memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-element and init warnings mean nothing on meta tensors
        with torch.device("meta"):
            return build_model(name, **kwargs)


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"


def _build_problem(name: str, kwargs: dict[str, Any]) -> str | None:
    try:
        model = _meta_model(name, kwargs)
    except Exception as exc:  # whatever the builder refuses is a config error, reported as such
        return f"{name} does not build with {_shown(kwargs)}: {type(exc).__name__}: {exc}"
    count = count_parameters(model)
    if count > MAX_PARAMETERS:
        return (f"{name} with {_shown(kwargs)} has {count:,} parameters (more than {MAX_PARAMETERS:,}): "
                "a width or depth out of range?")
    return None


def _check_builds(name: str, kwargs: dict[str, Any]) -> None:
    try:
        _cached_check(name, kwargs, (), lambda: _build_problem(name, kwargs))
    except ModelArgumentError as exc:
        # Name the argument when one alone (the others at their defaults) already fails.
        culprit = next((k for k in kwargs if len(kwargs) == 1 or _build_problem(name, {k: kwargs[k]})), None)
        raise ModelArgumentError(culprit, exc.reason) from None


def check_forward(name: str, kwargs: Mapping[str, Any], size: int, batch: int = 2, training: bool = True) -> None:
    """Refuse a (size, batch) the network cannot run: its logits must come back at the input size.

    Runs on the meta device, so it costs a fraction of a second whatever the network; raises
    ModelArgumentError (say a network that needs 32 px, or a batch of 1 under batch norm).
    """
    kwargs = dict(kwargs)
    check_model_kwargs(name, kwargs)

    def check() -> str | None:
        model = _meta_model(name, kwargs).train(training)
        try:
            with warnings.catch_warnings(), torch.device("meta"), torch.no_grad():
                warnings.simplefilter("ignore")
                out = model(torch.zeros(batch, 3, size, size))
        except Exception as exc:
            return (f"{name} does not run on a batch of {batch} image(s) of {size}x{size}: "
                    f"{type(exc).__name__}: {exc}")
        expected = (batch, size, size)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or (out.shape[0], *out.shape[2:]) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return f"{name} gives logits of shape {shape} for a batch of {batch} at {size}x{size}"
        return None

    _cached_check(name, kwargs, (size, batch, training), check)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def foreground_logit(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) score whose sign says person/background, for 1- or 2+-channel outputs."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]
