"""Character-level tokenizer of the demo model, saved as a Hugging Face fast tokenizer.

Why characters: the demo tasks (retrieval, copying, reversing, addition) are defined on characters, so one
token per character keeps answer spans, masks and attention patterns easy to read. The tokenizer is built
with the `tokenizers` library and saved with `save_pretrained`, so `AutoTokenizer.from_pretrained(dir)`
loads it offline, like any checkpoint's tokenizer.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"  # also the eos token, as in Dream
BOS_TOKEN = "<|bos|>"
MASK_TOKEN = "<|mask|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, MASK_TOKEN, UNK_TOKEN)

# Printable ASCII (space to tilde) and newline: enough for any demo prompt and for ad hoc user prompts.
CHARACTERS = "".join(chr(c) for c in range(32, 127)) + "\n"
assert set(string.digits + string.ascii_lowercase) <= set(CHARACTERS)


def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first (ids 0-3), then one id per character."""
    tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level fast tokenizer (no template: nothing is ever added to the text's ids)."""
    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK_TOKEN))
    # Every character is its own pre-token; WordLevel then maps it to its id (unknown ones to <|unk|>).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # decoding concatenates the characters back, with no separator
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=PAD_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def save_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer and write its files (tokenizer.json, tokenizer_config.json, ...) to `out_dir`."""
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
