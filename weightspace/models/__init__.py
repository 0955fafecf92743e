"""Built-in model families and the registry behind ``--model``."""

from __future__ import annotations

from weightspace.models._registry import (
    MODELS,
    ModelEntry,
    example_input_for,
    get_model,
    list_models,
    model_from_json,
    model_spec_from_json,
    model_spec_to_json,
    parse_input_shape,
    register_model,
)
from weightspace.models.cnn import CNN
from weightspace.models.language import LANGUAGE_FAMILIES, byte_language_model
from weightspace.models.mlp import MLP
from weightspace.models.resnet import ResNet
from weightspace.models.resnet20 import ResNet20
from weightspace.models.sine import Sine
from weightspace.models.siren import SIREN
from weightspace.models.vgg import VGG
from weightspace.models.vit import ViT

__all__ = [
    "CNN",
    "LANGUAGE_FAMILIES",
    "byte_language_model",
    "MLP",
    "MODELS",
    "ModelEntry",
    "ResNet",
    "ResNet20",
    "SIREN",
    "Sine",
    "VGG",
    "ViT",
    "example_input_for",
    "get_model",
    "list_models",
    "model_from_json",
    "model_spec_from_json",
    "model_spec_to_json",
    "parse_input_shape",
    "register_model",
]
