"""The built-in demo: a tiny masked diffusion LM in Dream's format, trained on synthetic tasks.

It lets every headattr command run end to end on a CPU in seconds, with no download: the checkpoint in
`MODEL_DIR` (Qwen2 weights run bidirectionally, shifted logits, `<|mask|>` token, character tokenizer) was
trained from scratch by `python -m headattr.demo.train` on key-value retrieval, copying, reversing and
addition (`headattr.demo.tasks`), and `DATA_FILE` holds held-out examples of those tasks to attribute on.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_DIR: Path = PACKAGE_DIR / "tiny-dream"
DATA_FILE: Path = PACKAGE_DIR / "data" / "demo.jsonl"

__all__ = ["DATA_FILE", "MODEL_DIR"]
