"""The demo model as a Dream-format checkpoint: transformers' Qwen2 made bidirectional, saved and loaded.

Dream's conventions are kept (shifted logits, a `<|mask|>` token, `config.json` with `"model_type": "Dream"`,
Qwen2 weight names), so headattr reads the built-in model through its Dream adapter like any Dream checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from headattr.demo import MODEL_DIR
from headattr.demo.objective import TrainConfig
from headattr.runs.rundir import atomic_write_bytes

WEIGHTS_FILE = "model.safetensors"


def model_config(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The Qwen2 configuration of the demo model (bidirectional, untied head, character vocabulary)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        use_cache=False,
        initializer_range=cfg.init_std,
    )
    return config


def make_bidirectional(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """Turn off causal masking everywhere (the config flag drives mask creation, the module flag sdpa)."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model


def build_model(config: Qwen2Config, attn_implementation: str = "sdpa") -> Qwen2ForCausalLM:
    """A freshly initialised bidirectional Qwen2 (seed torch before calling for reproducible weights)."""
    config.is_causal = False
    config._attn_implementation = attn_implementation
    return make_bidirectional(Qwen2ForCausalLM(config))


def dream_config_dict(config: Qwen2Config, dtype: str = "float32") -> dict:
    """config.json in Dream's format: Qwen2 field names, `model_type` Dream, a mask token id."""
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "mask_token_id": config.mask_token_id,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initializer_range": config.initializer_range,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "max_window_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_parameters["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": config.vocab_size,
    }


def save_checkpoint(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    train_config: TrainConfig | None = None,
) -> Path:
    """Write config.json (Dream format), model.safetensors (float32, Qwen2 names) and the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().contiguous() for name, tensor in model.state_dict().items()}
    # bytes, then an atomic write with the umask's mode (safetensors' own writer makes a 0600 file)
    atomic_write_bytes(out / WEIGHTS_FILE, safetensors_bytes(state, metadata={"format": "pt"}))
    config = dream_config_dict(model.config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    if train_config is not None:
        (out / "training_args.json").write_text(json.dumps(asdict(train_config), indent=2) + "\n")
    return out


def load_checkpoint(
    model_dir: str | Path = MODEL_DIR, attn_implementation: str = "sdpa"
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase]:
    """Load a demo checkpoint (float32, eval mode, bidirectional) and its tokenizer, offline."""
    root = Path(model_dir)
    fields = json.loads((root / "config.json").read_text())
    for key in ("model_type", "architectures", "auto_map", "torch_dtype"):
        fields.pop(key, None)
    config = Qwen2Config(**fields)
    model = build_model(config, attn_implementation)
    weights = load_file(str(root / WEIGHTS_FILE))
    model.load_state_dict({name: tensor.float() for name, tensor in weights.items()}, strict=True)
    # The tokenizer class is named directly: AutoTokenizer would also parse config.json and warn that it
    # does not know model_type "Dream" (harmless, but noise).
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(str(root))
