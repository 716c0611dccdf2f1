"""Generic checkpoints: any masked- or causal-LM through transformers' Auto classes, run as a whole.

The checkpoint's own code runs only with `trust_remote_code`. The user names what the config cannot tell:
the head projection (`--head-module`), the mask token and the shift convention. No layer reuse: every pass is a
whole forward pass (`WholeModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headattr.errors import HeadattrError
from headattr.models.backbone import WholeModel
from headattr.models.files import config_hash
from headattr.models.registry import Family
from headattr.models.spec import ModelSpec, find_head_modules


def _auto_model(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, trust: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    if "auto_map" in cfg and not trust:
        raise HeadattrError(
            f"{root} (model_type {cfg.get('model_type')!r}) needs its own Python code; "
            "review it and pass --trust-remote-code to run it"
        )
    try:
        config = AutoConfig.from_pretrained(str(root), trust_remote_code=trust)
    except Exception as exc:
        raise HeadattrError(f"cannot read the model config in {root}: {str(exc).splitlines()[0][:200]}") from None
    for auto in (AutoModelForMaskedLM, AutoModelForCausalLM):
        try:
            if str(device) == "meta":  # describe only: the architecture without reading any weight
                with torch.device("meta"):
                    return auto.from_config(config, dtype=dtype, trust_remote_code=trust)
            return auto.from_pretrained(str(root), config=config, dtype=dtype, trust_remote_code=trust).to(device)
        except (ValueError, KeyError):
            continue
    raise HeadattrError(f"no masked-LM or causal-LM head class for model_type {cfg.get('model_type')!r} in {root}")


def _first_int(cfg: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        if isinstance(cfg.get(key), int):
            return cfg[key]
    if default is not None:
        return default
    raise HeadattrError(f"config.json has none of {', '.join(keys)}; cannot tell the model's shape")


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    model = _auto_model(root, cfg, dtype, device, options.trust_remote_code)
    num_layers = _first_int(cfg, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    num_heads = _first_int(cfg, "num_attention_heads", "n_heads", "n_head", "num_heads")
    modules, name = find_head_modules(model, num_layers, options.head_module)
    return ModelSpec(
        model=model,
        tokenizer=None,
        family="generic",
        name=root.name,
        path=str(root),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=_first_int(cfg, "num_key_value_heads", "n_kv_heads", default=num_heads),
        head_dim=modules[0].in_features // num_heads,
        head_modules=modules,
        head_module=name,
        mask_token_id=cfg.get("mask_token_id"),
        logit_shift=False,
        config_hash=config_hash(root),
        num_parameters=sum(p.numel() for p in model.parameters()),
        backbone=WholeModel(model),
    )


FAMILY = Family("generic", (), load, display_name="generic")  # the fallback: not registered for any model type
