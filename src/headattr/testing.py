"""Building blocks for tests and examples: tiny checkpoints in Dream's and LLaDA's formats, and synthetic runs.

Everything is built in code, without downloads:

- `make_dream_checkpoint(root)`, `make_llada_checkpoint(root)`: random 3-layer x 4-head models in each
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
    names = sorted(weights)
    index = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k] for k in part}, str(root / fname))
        index.update({k: fname for k in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
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
    if method.name not in ("gate-ig", "stp"):
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
