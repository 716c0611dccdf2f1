"""Every family is tokenized by the checkpoint's own tokenizer.json, whatever class its tokenizer_config names.

The independent source is the tokenizers library reading the same file. transformers 5 builds a model-specific
class (from `tokenizer_class`, or from the model config when one is passed) that rebuilds the pipeline from the
vocabulary and drops the file's pre-tokenizer: on a character-level tokenizer that loses every space.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
import tokenizers

from headattr.data.records import Record
from headattr.data.tokens import tokenize_record
from headattr.testing import make_dream_checkpoint, make_llada_checkpoint, write_char_tokenizer

TEXTS = [
    "the mask is lifted; 12 + 7 = 19?",
    "  two  spaces, then a tab\tand a newline\n",
    "def f(x):\n    return x + 1  # code",
    "0123456789 -+=,;?",
    "caf\u00e9 \u4f60\u597d \u00fcber Stra\u00dfe",  # non-ASCII: the file maps it (to <unk> here) as it says
]
# one model-specific class per family, as a real checkpoint of that family would name it
SPECIFIC = {"dream": "Qwen2Tokenizer", "llada": "LlamaTokenizer", "generic": "BertTokenizer"}
TEMPLATE = "{{ bos_token }}{% for m in messages %}<eos>user={{ m['content'] }}<eos>{% endfor %}ans="


def _generic(root: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    vocab = write_char_tokenizer(root)
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    BertForMaskedLM(config).save_pretrained(root)
    return root


BUILDERS = {"dream": make_dream_checkpoint, "llada": make_llada_checkpoint, "generic": _generic}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {family: build(tmp_path_factory.mktemp(family) / family) for family, build in BUILDERS.items()}


def _declare(root: Path, tokenizer_class: str, template: str | None = None) -> None:
    path = root / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = tokenizer_class
    if template is not None:
        cfg["chat_template"] = template
    path.write_text(json.dumps(cfg))


def _load(root: Path):
    from headattr import load_model

    options = {"head_module": "attention.output.dense", "logit_shift": "off"} if root.name == "generic" else {}
    return load_model(root, device="meta", **options)


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("declared", ["PreTrainedTokenizerFast", "TokenizersBackend", "specific"])
def test_ids_are_those_of_tokenizer_json(checkpoints, family, declared):
    root = checkpoints[family]
    _declare(root, SPECIFIC[family] if declared == "specific" else declared)
    spec = _load(root)
    reference = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    for text in TEXTS:
        ids = spec.tokenizer(text, add_special_tokens=False).input_ids
        assert ids == reference.encode(text, add_special_tokens=False).ids, (family, declared, text)
        assert len(ids) == len(text)  # character level: one id per character, spaces included


@pytest.mark.parametrize("family", list(BUILDERS))
def test_chat_template_keeps_the_special_tokens_it_names(checkpoints, family):
    root = checkpoints[family]
    _declare(root, SPECIFIC[family], TEMPLATE)
    spec = _load(root)
    sample = tokenize_record(Record(0, "2+2?", " 4", None, "0" * 16), spec.tokenizer, 128, chat_template=True)
    rendered = jinja2.Template(TEMPLATE).render(messages=[{"role": "user", "content": "2+2?"}], bos_token="<bos>")
    reference = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    prompt = list(sample.input_ids[: sample.answer_start])
    assert prompt == reference.encode(rendered, add_special_tokens=False).ids
    bos, eos = reference.token_to_id("<bos>"), reference.token_to_id("<eos>")
    assert prompt[0] == bos and prompt.count(eos) == 2 and prompt.count(bos) == 1  # no second bos prepended


def test_origin_checkpoint_keeps_its_spaces():
    """The regression the origin's references caught: 19 ids, not 16 (a Qwen2Tokenizer drops the spaces)."""
    from headattr import load_model

    root = Path(__file__).parent / "fixtures" / "origin-gate-ig" / "dream-tiny"
    spec = load_model(root, device="meta")
    ids = spec.tokenizer("The mask is lifted.", add_special_tokens=False).input_ids
    assert ids == tokenizers.Tokenizer.from_file(str(root / "tokenizer.json")).encode("The mask is lifted.").ids
    assert len(ids) == 19


def test_decoding_is_that_of_tokenizer_json(checkpoints):
    """Completions are scored on decoded text: no clean-up of spaces the file does not ask for (transformers
    4 cleaned them by default when tokenizer_config.json said nothing)."""
    root = checkpoints["dream"]
    _declare(root, "Qwen2Tokenizer")
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    cfg.pop("clean_up_tokenization_spaces", None)
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    spec = _load(root)
    reference = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    ids = reference.encode("a , b ; c ? 1 + 2", add_special_tokens=False).ids
    assert spec.tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(ids)


def test_bos_is_the_one_tokenizer_config_declares(checkpoints):
    root = checkpoints["llada"]
    _declare(root, "LlamaTokenizer")
    spec = _load(root)
    sample = tokenize_record(Record(0, "k1?", "v1", None, "0" * 16), spec.tokenizer, 64)
    bos = json.loads((root / "tokenizer_config.json").read_text())["bos_token"]
    reference = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    assert list(sample.input_ids) == [reference.token_to_id(bos), *reference.encode("k1?v1").ids]
