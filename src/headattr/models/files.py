"""Checkpoint files: where a checkpoint is, its config, its tensors and its tokenizer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from headattr.errors import HeadattrError


def resolve_path(path: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, fetched (config, weights, tokenizer) into the HF cache."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise HeadattrError(f"model path {path} is a file; pass the checkpoint directory that holds config.json")
    if str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        raise HeadattrError(
            f"model directory {path} does not exist; pass a checkpoint directory or a hub id (org/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.jinja", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken"]
        return Path(snapshot_download(str(path), allow_patterns=patterns))
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        raise HeadattrError(
            f"cannot fetch model {path!r} from the Hugging Face hub ({type(exc).__name__}); "
            "download it and pass the local directory"
        ) from None


def read_config(root: Path) -> dict[str, Any]:
    """config.json as a dict."""
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise HeadattrError(f"{root} has no config.json; pass a Hugging Face checkpoint directory")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadattrError(f"cannot read {cfg_path}: {exc}") from None


def config_hash(root: Path) -> str:
    """sha256 of config.json's canonical JSON: the model identity runs are compared by."""
    canonical = json.dumps(read_config(root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def iter_checkpoint_tensors(root: Path, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from safetensors shards, or from `*.bin` files with `weights_only=True`.

    On the `meta` device, safetensors shards yield empty tensors of the stored shapes (headers only). A
    truncated or corrupt file is a `HeadattrError` naming it.
    """
    shards = sorted(root.glob("*.safetensors"))
    if shards:
        for shard in shards:
            yield from _safetensors_tensors(shard, device)
        return
    bins = sorted(root.glob("*.bin"))
    if not bins:
        raise HeadattrError(f"{root} holds no weights (*.safetensors or *.bin); pass a complete checkpoint directory")
    for shard in bins:
        try:
            state = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # unpickling refused or a damaged archive
            raise HeadattrError(f"cannot read weights {shard} ({type(exc).__name__}); is the file complete?") from None
        for name, tensor in state.items():
            yield name, tensor.to(device)


def _safetensors_tensors(shard: Path, device: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    meta = str(device) == "meta"
    try:
        with safe_open(str(shard), framework="pt", device="cpu" if meta else str(device)) as f:
            for name in f.keys():
                if meta:
                    yield name, torch.empty(f.get_slice(name).get_shape(), device="meta")
                else:
                    yield name, f.get_tensor(name)
    except SafetensorError as exc:
        raise HeadattrError(
            f"cannot read weights {shard}: {str(exc).splitlines()[0][:160]}; the file looks truncated or corrupt "
            "(download it again)"
        ) from None


def load_tokenizer(root: Path, trust_remote_code: bool) -> Any:
    """The checkpoint's own tokenizer, as its tokenizer files declare it.

    - `tokenizer.json` present: that pipeline exactly (normalizer, pre-tokenizer, model, post-processor), with
      the special tokens and chat template of `tokenizer_config.json`. transformers 5 would otherwise build a
      model-specific class (e.g. `Qwen2Tokenizer`, from `tokenizer_class` or from the model config) that
      rebuilds the pipeline from the vocabulary and ignores the file's pre-tokenizer, so the ids change.
    - a tokenizer class in the checkpoint's own code (`auto_map`) with `trust_remote_code`: that class.
    - otherwise (sentencepiece or vocab files only): the class `tokenizer_config.json` names.

    The model config is never consulted: it must not steer which tokenizer is built.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    declared = _tokenizer_config(root)
    remote = "AutoTokenizer" in (declared.get("auto_map") or {})
    with _quiet_transformers():
        try:
            if remote and trust_remote_code:
                return AutoTokenizer.from_pretrained(str(root), trust_remote_code=True)
            if (root / "tokenizer.json").is_file():
                return PreTrainedTokenizerFast.from_pretrained(str(root))
            return AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)
        except Exception as exc:
            raise HeadattrError(
                f"cannot load the tokenizer from {root} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "the directory needs tokenizer files (tokenizer.json, or those its tokenizer_config.json names)"
            ) from None


def _tokenizer_config(root: Path) -> dict[str, Any]:
    """tokenizer_config.json as a dict ({} when absent or unreadable: the tokenizer loader reports the rest)."""
    try:
        return json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' notices while a tokenizer loads (e.g. "model of type Dream", raised when a
    class falls back to reading config.json); what is loaded does not change."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*model of type.*")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
