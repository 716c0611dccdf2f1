"""Model families: each is one module that registers a `Family` here.

A family says which `config.json` `model_type` values it reads and how to build a `ModelSpec` from a
checkpoint directory. `load_model` looks the model type up here; a checkpoint of no registered family goes to
`generic` (transformers' Auto classes). Adding a Llama-like diffusion LM is one small module that maps its
config and weight names onto a transformers architecture and calls `register` (see `llada.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FamilyLoader = Callable[..., Any]  # (root, config dict, dtype, device, ModelConfig) -> ModelSpec


@dataclass(frozen=True)
class Family:
    """A model family: its name, the model types it claims, its loader and its head-module aliases.

    `head_module_aliases` maps names users know from the checkpoint (LLaDA's `attn_out`) to the module the
    loaded model has (`self_attn.o_proj`), so `--head-module` accepts either.
    """

    name: str
    model_types: tuple[str, ...]
    load: FamilyLoader
    head_module_aliases: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` the loader of its model types (a later registration of the same type replaces it)."""
    for model_type in family.model_types:
        FAMILIES[model_type.lower()] = family
    return family


def family_for(model_type: str) -> Family | None:
    """The family registered for a config's `model_type` (case-insensitive), or None (generic)."""
    return FAMILIES.get(str(model_type).lower())


def load_family(family: Family, root: Path, config: dict[str, Any], dtype: torch.dtype, device: str, options: Any):
    """Call a family's loader (one place, so that loaders keep one signature)."""
    return family.load(root, config, dtype, device, options)
