"""`ModelSpec`: everything the core needs to know about a loaded model, and what `headattr info` prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headattr.models.backbone import LayerStack, WholeModel

MASKED_DIFFUSION = "masked_diffusion"  # J: the masked tokens' cross-entropy, full attention (Dream, LLaDA, MoE)
BLOCK_DIFFUSION = "block_diffusion"  # J: the family's [x_t | x_0] block-diffusion training loss (SDAR, LLaDA 2)
OBJECTIVES = (MASKED_DIFFUSION, BLOCK_DIFFUSION)


@dataclass
class ModelSpec:
    """A loaded model with its shape, its head projections and the conventions of its family.

    `head_modules[l]` is layer l's attention output projection (its input is the concatenated head outputs,
    where gates act); `head_module` is its module name (data: what `--head-module` takes), `head_module_label`
    how `info` shows it. `backbone` runs the forward pass (see `models.backbone`). `load_config` is the
    `ModelConfig` it was loaded with (recorded in run.json).

    Mixture-of-experts families set `num_experts` (routed experts per MoE layer) and `active_experts` (routed
    experts chosen per token); block-diffusion families set `block_size` (tokens per block). None elsewhere.

    `objective` is the kind of J the core computes for the family (`OBJECTIVES`): the masked-diffusion loss
    over the whole sequence, or a block-diffusion family's own training loss (`engine.core`, docs/gate-ig.md).
    The family declares it, so that nothing outside `models/` asks which family a spec is.
    """

    model: nn.Module
    tokenizer: Any
    family: str
    name: str
    path: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_modules: list[nn.Linear]
    head_module: str
    mask_token_id: int | None
    logit_shift: bool
    config_hash: str
    num_parameters: int
    backbone: LayerStack | WholeModel
    head_module_label: str = ""
    load_config: Any = None
    num_experts: int | None = None
    active_experts: int | None = None
    block_size: int | None = None
    objective: str = MASKED_DIFFUSION

    def __post_init__(self) -> None:
        self.head_module_label = self.head_module_label or self.head_module
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.objective == BLOCK_DIFFUSION and not self.block_size:
            raise ValueError("a block-diffusion objective needs the spec's block_size")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def eos_ids(self) -> set[int]:
        """Token ids that end a completion: the tokenizer's EOS and the config's EOS id(s)."""
        cfg_eos = getattr(self.model.config, "eos_token_id", None)
        found = {
            getattr(self.tokenizer, "eos_token_id", None),
            *(cfg_eos if isinstance(cfg_eos, list | tuple) else [cfg_eos]),
        }
        return {int(i) for i in found if i is not None}

    def objective_tokens(self, tokens: int) -> int:
        """Tokens one row of the objective runs for a sample of `tokens` tokens: 2T for the block-diffusion
        loss ([x_t | x_0]), else T (what the memory planner and the dry-run's FLOPs count)."""
        return 2 * tokens if self.objective == BLOCK_DIFFUSION else tokens

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity and shape, recorded in run.json and printed by `headattr info`."""
        return {
            "name": self.name,
            "path": self.path,
            "family": self.family,
            "config_hash": self.config_hash,
            "num_parameters": self.num_parameters,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "head_module": self.head_module,
            "head_module_label": self.head_module_label,
            "mask_token_id": self.mask_token_id,
            "logit_shift": self.logit_shift,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "layer_reuse": self.backbone.resumable,
            **self.architecture(),
            **({"objective": self.objective} if self.objective != MASKED_DIFFUSION else {}),
        }

    def architecture(self) -> dict[str, int]:
        """The experts and block size of the families that have them (empty for dense, full-sequence models,
        so that their run.json is unchanged)."""
        fields = {"num_experts": self.num_experts, "active_experts": self.active_experts, "block_size": self.block_size}
        return {k: v for k, v in fields.items() if v is not None}

    def architecture_rows(self) -> list[tuple[str, Any]]:
        """`headattr info`'s rows for `architecture()` (none for dense, full-sequence models)."""
        rows: list[tuple[str, Any]] = []
        if self.num_experts is not None:
            rows += [("experts", self.num_experts), ("active experts", self.active_experts)]
        if self.block_size is not None:
            rows.append(("block size", f"{self.block_size} (block diffusion)"))
        return rows


HEAD_MODULE_CANDIDATES = ("o_proj", "attn_out", "out_proj", "c_proj", "dense", "wo")


def find_head_modules(model: nn.Module, num_layers: int, name: str | None) -> tuple[list[nn.Linear], str]:
    """The per-layer attention output projections, in layer order, and the name that found them.

    With `name`, modules whose qualified name ends with it; otherwise the first candidate suffix that
    matches exactly one `nn.Linear` per layer. Failing that, the error lists the Linear module names seen.
    """
    import re

    from headattr.errors import HeadattrError

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [name] if name else list(HEAD_MODULE_CANDIDATES)
    for suffix in names:
        found = [(n, m) for n, m in linears if n == suffix or n.endswith("." + suffix)]
        if len(found) == num_layers:
            return [m for _, m in found], suffix
    suffixes: dict[str, int] = {}
    for n, _ in linears:
        short = re.sub(r"^.*?\.\d+\.", "", n)
        suffixes[short] = suffixes.get(short, 0) + 1
    per_layer = sorted(s for s, k in suffixes.items() if k == num_layers)
    what = f"--head-module {name!r} matches no single Linear per layer" if name else "cannot locate the heads"
    raise HeadattrError(
        f"{what} ({num_layers} layers); pass --head-module NAME, one of the per-layer Linear modules: "
        f"{', '.join(per_layer) or 'none found'}"
    )
