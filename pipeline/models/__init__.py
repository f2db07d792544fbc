"""Segmentation architectures; see ``registry`` for the conventions they follow."""

from pipeline.models.registry import (MODELS, ModelSpec, available_models, build_model, count_parameters,
                                      foreground_logit, get_spec, register)

__all__ = ["MODELS", "ModelSpec", "available_models", "build_model", "count_parameters", "foreground_logit",
           "get_spec", "register"]
