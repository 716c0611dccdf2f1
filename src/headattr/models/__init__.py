"""Models: one adapter module per family, a registry, and the loader that picks the adapter.

- `dream`: Dream checkpoints as transformers' Qwen2 (bidirectional, shifted logits).
- `llada`: LLaDA's OLMo-style checkpoints mapped onto transformers' Llama (bidirectional, no shift).
- `sdar`: SDAR and TraDo (block diffusion) as transformers' Qwen3 (no shift; J is its block-diffusion loss).
- `lladamoe`: LLaDA-MoE as transformers' Qwen3-MoE (softmax routing, top-k weights not renormalised).
- `llada2_moe`: LLaDA 2.x (block diffusion, MoE) as transformers' GLM-4-MoE (fused QKV split, partial RoPE,
  group-limited sigmoid routing with expert bias; J is its block-diffusion loss).
- `block_masks`: the additive block-causal attention masks of block diffusion (inference and [x_t | x_0]).
- `moe`: the per-expert checkpoint tensors in transformers' stacked expert layout.
- `generic`: anything else through the Auto classes (its own code only with `trust_remote_code`).

`load_model(path, ModelConfig(...))` returns a `ModelSpec`; its `backbone` runs the forward pass from any layer
(`LayerStack`) or as a whole (`WholeModel`). A new family is one module calling `registry.register` (imported
below).
"""

from headattr.models import dream, llada, llada2_moe, lladamoe, sdar  # noqa: F401  (registers the native families)
from headattr.models.backbone import LayerContext, LayerStack, WholeModel
from headattr.models.files import config_hash, iter_checkpoint_tensors
from headattr.models.llada import LLADA_DEFAULT_MASK_ID, LLADA_RENAMES, llada_llama_config, llada_to_llama_name
from headattr.models.loading import DTYPES, ModelConfig, default_device, load_model, resolve_dtype
from headattr.models.registry import FAMILIES, Family, register
from headattr.models.spec import ModelSpec, find_head_modules

__all__ = [
    "DTYPES",
    "FAMILIES",
    "LLADA_DEFAULT_MASK_ID",
    "LLADA_RENAMES",
    "Family",
    "LayerContext",
    "LayerStack",
    "ModelConfig",
    "ModelSpec",
    "WholeModel",
    "config_hash",
    "default_device",
    "find_head_modules",
    "iter_checkpoint_tensors",
    "llada_llama_config",
    "llada_to_llama_name",
    "load_model",
    "register",
    "resolve_dtype",
]
