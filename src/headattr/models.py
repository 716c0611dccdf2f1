"""Load a diffusion LM into one small description, `ModelSpec`, that the engine uses.

Three families, one engine:

- `dream` (`model_type` "Dream"): loaded natively as transformers' Qwen2 with bidirectional attention;
  Dream's weight names are Qwen2's. Logits shifted (position j is predicted from j-1).
- `llada` (`model_type` "llada"): OLMo-style config and weight names mapped onto transformers' Llama,
  bidirectional. Logits not shifted. The gates sit on `attn_out`, which becomes Llama's `o_proj`.
- `generic`: anything else, through `AutoModel*` (its own code only with `trust_remote_code=True`); the
  user names what the config cannot tell (head projection, mask token, shift convention).

Native families expose a `Stack` (embedding, decoder layers, final norm, LM head) so the engine can start a
forward pass at any layer and evaluate the LM head only where needed. Generic models run whole forward passes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import HeadattrError

LLADA_DEFAULT_MASK_ID = 126336
HEAD_MODULE_CANDIDATES = ("o_proj", "attn_out", "out_proj", "c_proj", "dense", "wo")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class Stack:
    """The pieces of a decoder-only transformer, so a forward pass can start at any layer.

    `run(h, start, stop)` applies layers `start..stop-1` to hidden states `h` [B, T, d]; `logits(h)` applies
    the final norm and the LM head to selected hidden states [K, d]. Attention is bidirectional.
    """

    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    rotary_emb: nn.Module
    grad_checkpoint: bool = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def position_embeddings(
        self, h: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for `h` [B, T, d]; `positions` [B, T] (default 0..T-1), e.g. to skip left padding."""
        if positions is None:
            positions = torch.arange(h.shape[1], device=h.device)[None]
        return self.rotary_emb(h, positions)

    def run(
        self,
        h: torch.Tensor,
        start: int,
        stop: int,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layers `start..stop-1` on `h`; `attention_mask` is an additive float [B, 1, T, T] mask (None: full)."""
        for layer in self.layers[start:stop]:
            if self.grad_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(
                    layer, h, attention_mask, None, None, False, rope, use_reentrant=False, is_causal=False
                )
            else:
                h = layer(h, attention_mask=attention_mask, position_embeddings=rope, is_causal=False)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))


@dataclass
class ModelSpec:
    """Everything the engine needs to know about a model, and what `headattr info` prints."""

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
    head_module_name: str
    mask_token_id: int | None
    logit_shift: bool
    config_hash: str
    num_parameters: int
    stack: Stack | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_grad_checkpoint(self, on: bool) -> None:
        """Recompute layer activations during backward instead of storing them (long sequences)."""
        if self.stack is not None:
            self.stack.grad_checkpoint = on
        elif on:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of a whole forward pass (no shift applied)."""
        return self.model(input_ids=input_ids).logits

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
            "head_module": self.head_module_name,
            "mask_token_id": self.mask_token_id,
            "logit_shift": self.logit_shift,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "layer_reuse": self.stack is not None,
        }


# ---------------------------------------------------------------- public entry point


def load_model(
    path: str | Path,
    *,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    head_module: str | None = None,
    mask_token_id: int | None = None,
    logit_shift: str = "auto",
    attn_implementation: str = "sdpa",
) -> ModelSpec:
    """Load a checkpoint directory (or hub id) with its tokenizer and describe it.

    `dtype` "auto" means bfloat16 on CUDA and float32 on CPU. `logit_shift` is "auto" (by family), "on"
    or "off". Weights are frozen (`requires_grad=False`); the model is in eval mode. `device="meta"` reads
    only the config and the weights' names and shapes (no tensor data): enough to describe a 7B checkpoint
    in a second, not to run it.
    """
    root = _resolve_path(path)
    config = _read_config(root)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model_type = str(config.get("model_type", "")).lower()
    if model_type == "dream":
        spec = _load_dream(root, config, torch_dtype, device, attn_implementation)
    elif model_type == "llada":
        spec = _load_llada(root, config, torch_dtype, device, attn_implementation)
    else:
        spec = _load_generic(
            root, config, torch_dtype, device, trust_remote_code, head_module, attn_implementation
        )
    spec.tokenizer = _load_tokenizer(root, trust_remote_code)
    if (
        head_module is not None
        and spec.family != "generic"
        and head_module != spec.head_module_name.split(".")[-1]
    ):
        spec.head_modules, spec.head_module_name = _find_head_modules(
            spec.model, spec.num_layers, head_module
        )
    _apply_overrides(spec, mask_token_id, logit_shift)
    spec.model.eval().requires_grad_(False)
    return spec


# ---------------------------------------------------------------- files


def _resolve_path(path: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, fetched (config, weights, tokenizer) into the HF cache."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise HeadattrError(
            f"model path {path} is a file; pass the checkpoint directory that holds config.json"
        )
    if str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        raise HeadattrError(
            f"model directory {path} does not exist; pass a checkpoint directory or a hub id (org/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken"]
        return Path(snapshot_download(str(path), allow_patterns=patterns))
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        raise HeadattrError(
            f"cannot fetch model {path!r} from the Hugging Face hub ({type(exc).__name__}); "
            "download it and pass the local directory"
        ) from None


def _read_config(root: Path) -> dict[str, Any]:
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise HeadattrError(f"{root} has no config.json; pass a Hugging Face checkpoint directory")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadattrError(f"cannot read {cfg_path}: {exc}") from None


def config_hash(root: Path) -> str:
    """sha256 of config.json's canonical JSON: the model identity runs are compared by."""
    canonical = json.dumps(_read_config(root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def default_device() -> str:
    """Where models run unless `--device` says otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The weights' dtype for a `--dtype` value on `device` ("auto": bfloat16 on CUDA, float32 elsewhere)."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise HeadattrError(f"unknown --dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def iter_checkpoint_tensors(root: Path, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from safetensors shards, or from `*.bin` files with `weights_only=True`.

    On the `meta` device, safetensors shards yield empty tensors of the stored shapes (headers only).
    """
    from safetensors import safe_open

    shards = sorted(root.glob("*.safetensors"))
    if shards:
        meta = str(device) == "meta"
        for shard in shards:
            with safe_open(str(shard), framework="pt", device="cpu" if meta else str(device)) as f:
                for name in f.keys():
                    if meta:
                        yield name, torch.empty(f.get_slice(name).get_shape(), device="meta")
                    else:
                        yield name, f.get_tensor(name)
        return
    bins = sorted(root.glob("*.bin"))
    if not bins:
        raise HeadattrError(
            f"{root} holds no weights (*.safetensors or *.bin); pass a complete checkpoint directory"
        )
    for shard in bins:
        for name, tensor in torch.load(shard, map_location="cpu", mmap=True, weights_only=True).items():
            yield name, tensor.to(device)


def _load_tokenizer(root: Path, trust_remote_code: bool) -> Any:
    """AutoTokenizer; when the checkpoint's tokenizer class needs remote code, fall back to tokenizer.json."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "model of type Dream" notices: the config is read on purpose
    try:
        return AutoTokenizer.from_pretrained(str(root), trust_remote_code=trust_remote_code)
    except Exception as exc:
        if (root / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(root))
        raise HeadattrError(
            f"cannot load the tokenizer from {root} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "the directory needs tokenizer files"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


# ---------------------------------------------------------------- native families


def _load_dream(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, attn: str) -> ModelSpec:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = {
        k: v
        for k, v in cfg.items()
        if k not in ("model_type", "architectures", "auto_map", "transformers_version")
    }
    config = Qwen2Config(**fields)
    weights = dict(iter_checkpoint_tensors(root, device))
    model = _build_native(Qwen2ForCausalLM, config, weights, dtype, device, attn)
    return _native_spec(model, root, cfg, "dream", cfg.get("mask_token_id"), logit_shift=True)


LLADA_RENAMES = [
    (r"^model\.transformer\.wte\.", "model.embed_tokens."),
    (r"^model\.transformer\.ln_f\.", "model.norm."),
    (r"^model\.transformer\.ff_out\.", "lm_head."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.([qkv])_proj\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_out\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.up_proj\.", r"model.layers.\1.mlp.up_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_out\.", r"model.layers.\1.mlp.down_proj."),
]


def llada_to_llama_name(name: str) -> str:
    """Map a LLaDA (OLMo-style) weight name to transformers' Llama name."""
    for pattern, repl in LLADA_RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise HeadattrError(f"unexpected weight {name!r} in a LLaDA checkpoint; is model_type really 'llada'?")


def llada_llama_config(cfg: dict[str, Any]) -> Any:
    """transformers `LlamaConfig` equivalent to a LLaDA config.json."""
    from transformers import LlamaConfig

    def need(key: str) -> Any:
        if key not in cfg:
            raise HeadattrError(f"LLaDA config.json lacks {key!r}; the checkpoint directory looks incomplete")
        return cfg[key]

    n_heads = need("n_heads")
    return LlamaConfig(
        hidden_size=need("d_model"),
        intermediate_size=need("mlp_hidden_size"),
        num_hidden_layers=need("n_layers"),
        num_attention_heads=n_heads,
        num_key_value_heads=cfg.get("n_kv_heads") or n_heads,
        vocab_size=cfg.get("embedding_size") or need("vocab_size"),
        max_position_embeddings=cfg.get("max_sequence_length", 4096),
        rope_theta=cfg.get("rope_theta", 10000.0),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        attention_bias=bool(cfg.get("include_qkv_bias") or cfg.get("include_bias")),
        mlp_bias=bool(cfg.get("include_bias")),
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        hidden_act="silu",
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )


def _load_llada(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, attn: str) -> ModelSpec:
    from transformers import LlamaForCausalLM

    config = llada_llama_config(cfg)
    weights = {llada_to_llama_name(k): v for k, v in iter_checkpoint_tensors(root, device)}
    model = _build_native(LlamaForCausalLM, config, weights, dtype, device, attn)
    spec = _native_spec(
        model, root, cfg, "llada", cfg.get("mask_token_id", LLADA_DEFAULT_MASK_ID), logit_shift=False
    )
    spec.head_module_name = "attn_out (as self_attn.o_proj)"
    return spec


def _build_native(
    cls: type, config: Any, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: str, attn: str
) -> nn.Module:
    """Instantiate `cls` without allocating random weights, then adopt the checkpoint's tensors."""
    config.is_causal = False  # transformers 5.x: bidirectional masks for the whole-model forward
    config._attn_implementation = attn
    with torch.device("meta"):
        model = cls(config)
    if config.tie_word_embeddings and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise HeadattrError(
            f"checkpoint weights do not match the {config.model_type} layout ({detail}); "
            "is config.json from the same checkpoint?"
        )
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in weights.items()}, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):  # non-persistent RoPE buffers are not in the checkpoint: rebuild them
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False  # sdpa reads the module flag when no mask is given
    return model


def _native_spec(
    model: nn.Module, root: Path, cfg: dict[str, Any], family: str, mask_id: int | None, logit_shift: bool
) -> ModelSpec:
    c = model.config
    base = model.model
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    stack = Stack(base.embed_tokens, base.layers, base.norm, model.lm_head, base.rotary_emb)
    return ModelSpec(
        model=model,
        tokenizer=None,
        family=family,
        name=root.name,
        path=str(root),
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        head_dim=head_dim,
        head_modules=[layer.self_attn.o_proj for layer in base.layers],
        head_module_name="self_attn.o_proj",
        mask_token_id=mask_id,
        logit_shift=logit_shift,
        config_hash=config_hash(root),
        num_parameters=sum(p.numel() for p in model.parameters()),
        stack=stack,
    )


# ---------------------------------------------------------------- generic models


def _load_generic(
    root: Path,
    cfg: dict[str, Any],
    dtype: torch.dtype,
    device: str,
    trust_remote_code: bool,
    head_module: str | None,
    attn: str,
) -> ModelSpec:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    if "auto_map" in cfg and not trust_remote_code:
        raise HeadattrError(
            f"{root} (model_type {cfg.get('model_type')!r}) needs its own Python code; "
            "review it and pass --trust-remote-code to run it"
        )
    try:
        config = AutoConfig.from_pretrained(str(root), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise HeadattrError(
            f"cannot read the model config in {root}: {str(exc).splitlines()[0][:200]}"
        ) from None
    model = None
    for auto in (AutoModelForMaskedLM, AutoModelForCausalLM):
        try:
            if str(device) == "meta":  # describe only: the architecture without reading any weight
                with torch.device("meta"):
                    model = auto.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
            else:
                model = auto.from_pretrained(
                    str(root), config=config, dtype=dtype, trust_remote_code=trust_remote_code
                )
            break
        except (ValueError, KeyError):
            continue
    if model is None:
        raise HeadattrError(
            f"no masked-LM or causal-LM head class for model_type {cfg.get('model_type')!r} in {root}"
        )
    model.to(device)
    num_layers = _first_int(cfg, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    num_heads = _first_int(cfg, "num_attention_heads", "n_heads", "n_head", "num_heads")
    modules, name = _find_head_modules(model, num_layers, head_module)
    num_kv = _first_int(cfg, "num_key_value_heads", "n_kv_heads", default=num_heads)
    return ModelSpec(
        model=model,
        tokenizer=None,
        family="generic",
        name=root.name,
        path=str(root),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=modules[0].in_features // num_heads,
        head_modules=modules,
        head_module_name=name,
        mask_token_id=cfg.get("mask_token_id"),
        logit_shift=False,
        config_hash=config_hash(root),
        num_parameters=sum(p.numel() for p in model.parameters()),
    )


def _first_int(cfg: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        if isinstance(cfg.get(key), int):
            return cfg[key]
    if default is not None:
        return default
    raise HeadattrError(f"config.json has none of {', '.join(keys)}; cannot tell the model's shape")


def _find_head_modules(model: nn.Module, num_layers: int, name: str | None) -> tuple[list[nn.Linear], str]:
    """The per-layer attention output projections, in layer order.

    With `name`, modules whose qualified name ends with it; otherwise the first candidate suffix that
    matches exactly one `nn.Linear` per layer. Failing that, the error lists the Linear module names seen.
    """
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


def _apply_overrides(spec: ModelSpec, mask_token_id: int | None, logit_shift: str) -> None:
    """Apply user overrides; fill the mask token from the tokenizer when the config has none."""
    if mask_token_id is not None:
        spec.mask_token_id = int(mask_token_id)
    vocab = spec.model.get_input_embeddings().num_embeddings
    tok_mask = getattr(spec.tokenizer, "mask_token_id", None)
    if spec.mask_token_id is None and tok_mask is not None and tok_mask < vocab:
        spec.mask_token_id = int(tok_mask)
    if spec.mask_token_id is not None and not 0 <= spec.mask_token_id < vocab:
        raise HeadattrError(f"mask token id {spec.mask_token_id} is outside the model's vocabulary (0..{vocab - 1}); "
                            "fix --mask-token-id")
    if logit_shift not in ("auto", "on", "off"):
        raise HeadattrError(f"unknown --logit-shift {logit_shift!r}; choose auto, on or off")
    if logit_shift != "auto":
        spec.logit_shift = logit_shift == "on"
    elif spec.family == "generic":
        raise HeadattrError(
            f"cannot tell whether {spec.name} shifts its logits; pass --logit-shift on "
            "(position j predicted from j-1, like Dream) or off (from j, like LLaDA)"
        )
