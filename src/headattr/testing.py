"""Building blocks for tests and examples: tiny checkpoints in each family's released format, and synthetic runs.

Everything is built in code, without downloads:

- `make_dream_checkpoint(root)`, `make_llada_checkpoint(root)`, `make_sdar_checkpoint(root)`,
  `make_lladamoe_checkpoint(root)`, `make_llada2_checkpoint(root)`: random 3-layer x 4-head models in each
  family's on-disk format (config keys, weight names, sharding), with a character-level tokenizer;
- `make_run(path, signal, noise, ...)`: a complete run directory (written through `rundir.run_meta`, the same
  builder `headattr attribute` uses) whose per-sample attributions are `signal + noise`, so that the true
  reliability of its scores is known.

Importable as `headattr.testing` under any pytest import mode (the test suite's `conftest.py` only wraps it
in fixtures).
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import save_file

from headattr.data.samples import DataConfig
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig, MethodConfig
from headattr.methods.aggregate import final_scores
from headattr.models import LLADA_RENAMES, ModelConfig
from headattr.runs.rundir import prepare_output_dir, run_meta, write_run

TOY_HASH = "ab" * 32

MASK_ID = 3
CHARS = string.ascii_lowercase + string.digits + " =,;?+-"
TINY = {"hidden": 32, "layers": 3, "heads": 4, "kv_heads": 2, "inter": 48}


def write_char_tokenizer(root: Path, mask: bool = True) -> int:
    """A character-level fast tokenizer with <pad>=0 <bos>=1 <eos>=2 <mask>=3; returns the vocab size.

    With `mask=False` the tokenizer declares no mask token (the id stays in the vocabulary).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<mask>": MASK_ID}
    vocab.update({c: i + 4 for i, c in enumerate(CHARS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", mask_token="<mask>"
    )
    fast.save_pretrained(str(root))
    if not mask:  # transformers fills in a default "<mask>"; a checkpoint without one must say nothing
        cfg_path = root / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("mask_token", None)
        cfg_path.write_text(json.dumps(cfg))
    return len(vocab)


def _qwen2_weights(vocab: int, seed: int) -> dict[str, torch.Tensor]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=TINY["hidden"],
        intermediate_size=TINY["inter"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        num_key_value_heads=TINY["kv_heads"],
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random biases and norms, so that tests exercise every weight
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def make_dream_checkpoint(root: Path, seed: int = 0, mask: bool = True) -> Path:
    """Dream layout: Qwen2 fields and weight names, `model_type` "Dream", remote-code `auto_map` (unused)."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(root, mask=mask)
    config = {
        "model_type": "Dream",
        "architectures": ["DreamModel"],
        "auto_map": {
            "AutoModel": "modeling_dream.DreamModel",
            "AutoConfig": "configuration_dream.DreamConfig",
        },
        "hidden_size": TINY["hidden"],
        "intermediate_size": TINY["inter"],
        "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["heads"],
        "num_key_value_heads": TINY["kv_heads"],
        "vocab_size": vocab,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "mask_token_id": MASK_ID,
    }
    if not mask:
        del config["mask_token_id"]
    (root / "config.json").write_text(json.dumps(config))
    save_file(_qwen2_weights(vocab, seed), str(root / "model.safetensors"))
    return root


def _llama_to_llada_name(name: str) -> str:
    import re

    for pattern, repl in LLADA_RENAMES:  # invert the loader's table: each entry is one-to-one
        llama_pat = repl.replace(r"\1", r"(\d+)").replace(r"\2", "([qkv])").replace(".", r"\.")
        llada = pattern.lstrip("^").replace(r"\.", ".").replace(r"(\d+)", r"\1").replace("([qkv])", r"\2")
        new, n = re.subn("^" + llama_pat, llada, name)
        if n:
            return new
    raise KeyError(name)


def make_llada_checkpoint(root: Path, seed: int = 0, shards: int = 2) -> Path:
    """LLaDA layout: OLMo-style config, `model.transformer.*` weight names, sharded with an index file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(root)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=TINY["hidden"],
        intermediate_size=TINY["inter"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        num_key_value_heads=TINY["heads"],
        tie_word_embeddings=False,
        rope_theta=500000.0,
    )
    llama = LlamaForCausalLM(cfg).state_dict()
    weights = {_llama_to_llada_name(k): v.contiguous() for k, v in llama.items()}
    config = {
        "model_type": "llada",
        "architectures": ["LLaDAModelLM"],
        "d_model": TINY["hidden"],
        "n_layers": TINY["layers"],
        "n_heads": TINY["heads"],
        "n_kv_heads": TINY["heads"],
        "mlp_hidden_size": TINY["inter"],
        "vocab_size": vocab,
        "embedding_size": vocab,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "max_sequence_length": 512,
        "include_bias": False,
        "include_qkv_bias": False,
        "weight_tying": False,
        "block_type": "llama",
        "mask_token_id": MASK_ID,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    (root / "config.json").write_text(json.dumps(config))
    save_shards(root, weights, shards)
    return root


def save_shards(root: Path, weights: dict[str, torch.Tensor], shards: int) -> None:
    """`weights` in `shards` safetensors files (names dealt round-robin in sorted order) with an index file."""
    names = sorted(weights)
    index = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k] for k in part}, str(root / fname))
        index.update({k: fname for k in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


SDAR_CONFIG = {  # the released keys besides the shape (remote-code `auto_map`, SDAR's training options: unused)
    "model_type": "sdar",
    "architectures": ["SDARForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_sdar.SDARConfig",
        "AutoModel": "modeling_sdar.SDARModel",
        "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
    },
    "block_size": 4,
    "attn_implementation": "flex_attention",
    "fuse_cross_entropy": True,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "use_sliding_window": False,
    "sliding_window": None,
}
LLADAMOE_CONFIG = {  # `norm_topk_prob` true, as LLaDA-MoE's own code ignores it
    "model_type": "lladamoe",
    "architectures": ["LLaDAMoEModelLM"],
    "auto_map": {
        "AutoConfig": "configuration_lladamoe.LLaDAConfig",
        "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
        "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
    },
    "rope_theta": 50000.0,
    "rope_scaling": None,
    "partial_rotary_factor": 1.0,
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "clip_qkv": None,
    "qk_layernorm": True,
    "norm_topk_prob": True,
    "moe_router_enable_expert_bias": False,
    "moe_router_score_function": "softmax",
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
}
LLADA2_CONFIG = {  # `rotary_dim` is written but, as in LLaDA 2, not read
    "model_type": "llada2_moe",
    "architectures": ["LLaDA2MoeModelLM"],
    "auto_map": {
        "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
    },
    "rope_theta": 600000.0,
    "rope_scaling": None,
    "partial_rotary_factor": 0.5,
    "rotary_dim": 12,
    "rms_norm_eps": 1e-6,
    "use_qkv_bias": False,
    "use_bias": False,
    "use_qk_norm": True,
    "norm_head": False,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
    "routed_scaling_factor": 2.5,
    "n_group": 4,
    "topk_group": 2,
    "first_k_dense_replace": 1,
    "num_shared_experts": 1,
}
MOE = {"experts": 8, "active": 2, "expert_inter": 16, "shared_inter": 24}


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Normal tensors of the given shapes (std 0.2; norm weights around 1, expert biases around 0)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        out[name] = 1.0 + 0.1 * noise if "norm" in name else (0.1 if "bias" in name else 0.2) * noise
    return out


def _write_config(root: Path, fields: dict) -> int:
    """Write the character tokenizer and config.json (`fields`, the vocabulary and the special ids); returns the
    vocabulary size."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(root)
    config = {**fields, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (root / "config.json").write_text(json.dumps(config))
    return vocab


def _mlp_shapes(prefix: str, d: int, width: int) -> dict[str, tuple[int, ...]]:
    """A SwiGLU MLP's weight shapes under `prefix`."""
    return {f"{prefix}.{n}_proj.weight": (width, d) for n in ("gate", "up")} | {
        f"{prefix}.down_proj.weight": (d, width)
    }


def _qwen3_layer_shapes(p: str, heads: int, kv: int, hd: int) -> dict[str, tuple[int, ...]]:
    """A Qwen3-style layer's attention and norm shapes under `p` (its MLP apart)."""
    d = TINY["hidden"]
    a = f"{p}.self_attn"
    return {
        f"{a}.q_proj.weight": (heads * hd, d),
        f"{a}.k_proj.weight": (kv * hd, d),
        f"{a}.v_proj.weight": (kv * hd, d),
        f"{a}.o_proj.weight": (d, heads * hd),
        f"{a}.q_norm.weight": (hd,),
        f"{a}.k_norm.weight": (hd,),
        f"{p}.input_layernorm.weight": (d,),
        f"{p}.post_attention_layernorm.weight": (d,),
    }


def _routed_shapes(p: str) -> dict[str, tuple[int, ...]]:
    """An MoE layer's router and per-expert MLP shapes under `p` (`<layer>.mlp`)."""
    shapes = {f"{p}.gate.weight": (MOE["experts"], TINY["hidden"])}
    for e in range(MOE["experts"]):
        shapes |= _mlp_shapes(f"{p}.experts.{e}", TINY["hidden"], MOE["expert_inter"])
    return shapes


def make_sdar_checkpoint(root: Path, seed: int = 0) -> Path:
    """SDAR layout: Qwen3 fields and weight names (q/k norms; head_dim 16, so heads x head_dim != hidden),
    `model_type` "sdar", block size 4; the mask token comes from the tokenizer."""
    d, layers, heads, kv, hd = TINY["hidden"], TINY["layers"], TINY["heads"], TINY["kv_heads"], 16
    shape = {"hidden_size": d, "intermediate_size": TINY["inter"], "num_hidden_layers": layers, "head_dim": hd}
    heads_kv = {"num_attention_heads": heads, "num_key_value_heads": kv, "max_window_layers": layers}
    vocab = _write_config(root, SDAR_CONFIG | shape | heads_kv)
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    for i in range(layers):
        shapes |= _qwen3_layer_shapes(f"model.layers.{i}", heads, kv, hd) | _mlp_shapes(
            f"model.layers.{i}.mlp", d, TINY["inter"]
        )
    save_file(_random_weights(shapes, seed), str(root / "model.safetensors"))
    return root


def make_lladamoe_checkpoint(root: Path, seed: int = 0, shared_expert: bool = False) -> Path:
    """LLaDA-MoE layout: OLMoE-like fields and weight names, layer 0 dense (`moe_layer_freq` 0), 8 experts with 2
    active; with `shared_expert`, each MoE layer also has a `shared_expert` MLP. The mask token comes from the
    tokenizer."""
    d, layers, heads = TINY["hidden"], TINY["layers"], TINY["heads"]
    vocab = _write_config(
        root,
        LLADAMOE_CONFIG
        | {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads}
        | {"dense_intermediate_size": TINY["inter"], "expert_intermediate_size": MOE["expert_inter"]}
        | {"num_experts": MOE["experts"], "num_experts_per_tok": MOE["active"]}
        | {"moe_layer_freq": [0] + [1] * (layers - 1)}
        | {"shared_expert_intermediate_size": MOE["shared_inter"] if shared_expert else None},
    )
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= _qwen3_layer_shapes(p, heads, heads, d // heads)
        shapes |= _mlp_shapes(f"{p}.mlp", d, TINY["inter"]) if i == 0 else _routed_shapes(f"{p}.mlp")
        if shared_expert and i > 0:
            shapes |= _mlp_shapes(f"{p}.shared_expert", d, MOE["shared_inter"])
    save_shards(root, _random_weights(shapes, seed), 2)
    return root


def make_llada2_checkpoint(root: Path, seed: int = 0, block_size: int | None = None) -> Path:
    """LLaDA 2 layout: `model.word_embeddings`, fused `attention.query_key_value`, `attention.dense`, q/k
    layernorms; head_dim 12 with half of it rotary; layer 0 dense (`first_k_dense_replace` 1), then 8 experts in
    4 groups (2 kept), 2 active, a shared expert and an `expert_bias`. The mask token comes from the tokenizer.
    The released config.json names no block size (the loader's default is 32); `block_size` writes one, so that
    blocks show on a tiny sample."""
    d, layers, heads, kv, hd = TINY["hidden"], TINY["layers"], TINY["heads"], TINY["kv_heads"], 12
    vocab = _write_config(
        root,
        LLADA2_CONFIG
        | {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv}
        | {"head_dim": hd, "intermediate_size": TINY["inter"], "moe_intermediate_size": MOE["expert_inter"]}
        | {"num_experts": MOE["experts"], "num_experts_per_tok": MOE["active"]}
        | ({} if block_size is None else {"block_size": block_size}),
    )
    shapes = {"model.word_embeddings.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    for i in range(layers):
        p, a = f"model.layers.{i}", f"model.layers.{i}.attention"
        shapes |= {
            f"{a}.query_key_value.weight": ((heads + 2 * kv) * hd, d),
            f"{a}.dense.weight": (d, heads * hd),
            f"{a}.query_layernorm.weight": (hd,),
            f"{a}.key_layernorm.weight": (hd,),
            f"{p}.input_layernorm.weight": (d,),
            f"{p}.post_attention_layernorm.weight": (d,),
        }
        if i == 0:
            shapes |= _mlp_shapes(f"{p}.mlp", d, TINY["inter"])
            continue
        shapes |= _routed_shapes(f"{p}.mlp") | _mlp_shapes(f"{p}.mlp.shared_experts", d, MOE["expert_inter"])
        shapes[f"{p}.mlp.gate.expert_bias"] = (MOE["experts"],)
    save_shards(root, _random_weights(shapes, seed), 2)
    return root


# run.json's `model` of a synthetic run (`make_run` fills in the hash and the shape, in these places)
TOY_MODEL = {
    "name": "toy-dream",
    "path": "/models/toy",
    "family": "dream",
    "config_hash": None,
    "num_parameters": 123,
    "num_layers": None,
    "num_heads": None,
    "num_kv_heads": 2,
    "head_dim": 8,
    "head_module": "self_attn.o_proj",
    "head_module_label": "self_attn.o_proj",
    "mask_token_id": 3,
    "logit_shift": True,
    "dtype": "float32",
    "device": "cpu",
    "layer_reuse": True,
}


def make_run(
    path: Path,
    signal: np.ndarray,
    noise: float | np.ndarray,
    n: int = 20,
    v: int = 2,
    seed: int = 0,
    config: dict | None = None,
    config_hash: str = TOY_HASH,
    sample_ids: list[str] | None = None,
    heatmap: bool = False,
    method: MethodConfig | None = None,
) -> Path:
    """Write a complete run directory: per-sample attributions = signal + noise[layer] * N(0, 1).

    `method` (default: Gate-IG with 8 base nodes) is recorded in run.json's `config` with its settings, and its
    diagnostics: J(1), J(b) and completeness errors per layer for the path methods (`gate-ig`, `stp`), J(1)
    alone for the others.
    """
    method = method or GateIGConfig(ig_steps=8)
    rng = np.random.default_rng(seed)
    num_layers, num_heads = signal.shape
    sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64), (num_layers,))[None, :, None]
    per_sample = signal[None] + sigma * rng.standard_normal((n, num_layers, num_heads))
    offsets = np.linspace(-1.0, 1.0, v) if v > 1 else np.zeros(1)  # variants differ, mean unchanged
    att = (per_sample[:, None] + offsets[None, :, None, None] * 0.01).astype(np.float32)
    cfg = _toy_config(n, v, seed, method) | (config or {})
    ids = sample_ids or [f"{seed}-{i}" for i in range(n)]
    j_full = rng.normal(size=(n, v))
    j_base = j_full[..., None] - rng.uniform(1.0, 2.0, size=(n, v, num_layers))
    err = 0.001 * rng.normal(size=(n, v, num_layers))
    diagnostics = {"j_full": j_full, "j_baseline": j_base, "completeness_error": err}
    if not method.checks_completeness:
        diagnostics = {"j_full": j_full}
    meta = run_meta(
        config=cfg,
        model=TOY_MODEL | {"config_hash": config_hash, "num_layers": num_layers, "num_heads": num_heads},
        samples=[
            {"index": i, "hash": hashlib.sha256(s.encode()).hexdigest()[:16], "prompt_tokens": 5, "answer_tokens": 3}
            for i, s in enumerate(ids)
        ],
        variants=[{"prob": p, "draw": 0} for p in cfg["mask_probs"]],
        diagnostics={k: a.tolist() for k, a in diagnostics.items()} | method.summarize(diagnostics),
        data_report={},
        device={"type": "cpu", "name": "synthetic"},
        created="2025-12-28T00:00:00+00:00",
    )
    prepare_output_dir(path)
    write_run(path, final_scores(att, cfg["postprocess"]), att, meta, heatmap=heatmap)
    return path


def _toy_config(n: int, v: int, seed: int, method: MethodConfig) -> dict:
    """run.json's `config` of a synthetic run: its data, method, `v` masking rates and model settings."""
    return {
        "seed": seed,
        **DataConfig(samples=n, seed=seed).to_meta(),
        **method.to_meta(),
        **MaskConfig(
            mask_probs=tuple(round(0.1 + 0.8 * i / max(v - 1, 1), 3) for i in range(v)),
            mask_samples_per_prob=1,
            mask_seed=seed,
        ).to_meta(),
        "postprocess": "signed",
        "batch_size": 64,
        **ModelConfig(dtype="float32").to_meta(),
    }


def standard_signal(num_layers: int, num_heads: int, seed: int = 1) -> np.ndarray:
    """Per layer: head signals with mean 0 and population variance exactly 1."""
    s = np.random.default_rng(seed).standard_normal((num_layers, num_heads))
    return (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True)


def dream_7b_shapes_on_cuda() -> SimpleNamespace:
    """What the batch planner reads of Dream 7B in bf16 on a GPU (shapes only; nothing runs on it)."""
    return SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(hidden_size=3584, intermediate_size=18944)),
        num_kv_heads=4,
        head_dim=128,
        num_heads=28,
        num_layers=28,
        dtype=torch.bfloat16,
        device=torch.device("cuda"),
        vocab_size=152064,
        backbone=SimpleNamespace(resumable=True),
    )
