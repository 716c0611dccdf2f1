"""Model families: each is one module that registers a `Family` here.

A family says which `config.json` `model_type` values it reads, how to build a `ModelSpec` from a checkpoint
directory, the name users read, and which sampler generates with it (by the key generation registers that
sampler under: models sit below generation and never import it). `load_model` looks the model type up here; a
checkpoint of no registered family goes to `generic` (transformers' Auto classes). Adding a Llama-like
diffusion LM is one small module that maps its config and weight names onto a transformers architecture and
calls `register` (see `llada.py`); if it generates with a new sampler, that sampler is a module of
`headattr.generation` registered under the key the family names.
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
    loaded model has (`self_attn.o_proj`), so `--head-module` accepts either. `display_name` is how messages
    name the family ("LLaDA"); `sampler` the key of its sampler in `headattr.generation` (None: the family
    does not generate).
    """

    name: str
    model_types: tuple[str, ...]
    load: FamilyLoader
    head_module_aliases: dict[str, str] = field(default_factory=dict)
    display_name: str = ""
    sampler: str | None = None


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` the loader of its model types (a later registration of the same type replaces it)."""
    for model_type in family.model_types:
        FAMILIES[model_type.lower()] = family
    return family


def family_for(model_type: str) -> Family | None:
    """The family registered for a config's `model_type` (case-insensitive), or None (generic)."""
    return FAMILIES.get(str(model_type).lower())


def registered() -> list[Family]:
    """Every registered family once (by name), in registration order."""
    return list({f.name: f for f in FAMILIES.values()}.values())


def family_named(name: str) -> Family | None:
    """The registered family called `name` (a `ModelSpec.family`), or None (generic, or not registered)."""
    return next((f for f in registered() if f.name == name), None)


def load_family(family: Family, root: Path, config: dict[str, Any], dtype: torch.dtype, device: str, options: Any):
    """Call a family's loader (one place, so that loaders keep one signature)."""
    return family.load(root, config, dtype, device, options)
