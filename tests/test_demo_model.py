"""The built-in demo: shipped checkpoint and dataset, tokenizer, training entry point, and the decoder."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from headattr.decode import unmask_decode
from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.demo import tasks as demo_tasks
from headattr.demo import train as demo_train
from headattr.demo.tokenizer import build_tokenizer

MAX_WEIGHT_BYTES = 5_000_000
# Per-task floors for masked-token accuracy at mask rate 0.5 on 40 held-out examples, about 0.1 below what the
# shipped model measures there (kv 0.84, copy 1.0, reverse 1.0, add 1.0; chance is at most 0.1): a broken
# loader, shift or mask token drops far below them.
ACCURACY_FLOOR = {"kv": 0.74, "copy": 0.9, "reverse": 0.9, "add": 0.9}


@pytest.fixture(scope="module")
def demo() -> tuple[Qwen2ForCausalLM, object]:
    torch.set_num_threads(1)
    return demo_train.load_checkpoint(MODEL_DIR)


def _dataset_by_task() -> dict[str, list[dict[str, str]]]:
    by_task: dict[str, list[dict[str, str]]] = {}
    for row in demo_tasks.read_dataset(DATA_FILE):
        by_task.setdefault(row["task"], []).append(row)
    return by_task


# ---------------------------------------------------------------- shipped files


def test_checkpoint_is_in_dream_format() -> None:
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "Dream"
    assert config["architectures"] == ["DreamModel"]
    assert config["tie_word_embeddings"] is False
    assert "auto_map" not in config
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    assert config["mask_token_id"] == tokenizer.mask_token_id == tokenizer.convert_tokens_to_ids("<|mask|>")
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["pad_token_id"] == config["eos_token_id"] == tokenizer.pad_token_id
    assert config["vocab_size"] == len(tokenizer)
    weights = MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= MAX_WEIGHT_BYTES
    with safe_open(str(weights), "pt") as handle:
        names = set(handle.keys())
    layers = config["num_hidden_layers"]
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names
    for i in range(layers):
        prefix = f"model.layers.{i}."
        assert {f"{prefix}self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")} <= names
        assert f"{prefix}self_attn.o_proj.weight" in names and f"{prefix}self_attn.o_proj.bias" not in names
        assert {f"{prefix}mlp.{p}_proj.weight" for p in ("gate", "up", "down")} <= names
    assert config["num_attention_heads"] == 8 and layers == 6


def test_loads_as_plain_qwen2_and_is_bidirectional(demo) -> None:
    fields = json.loads((MODEL_DIR / "config.json").read_text())
    for key in ("model_type", "architectures", "torch_dtype"):
        fields.pop(key)
    config = Qwen2Config(**fields)
    config.is_causal = False
    model = Qwen2ForCausalLM.from_pretrained(str(MODEL_DIR), config=config)
    model = demo_train.make_bidirectional(model).eval()
    reference, tokenizer = demo
    example = demo_tasks.reverse_example(demo_tasks.random.Random(3))
    ids = torch.tensor([demo_train.encode(example, tokenizer)[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(logits, reference(input_ids=ids).logits)
        changed = ids.clone()
        changed[0, -1] = tokenizer.mask_token_id
        # A later token changes an earlier position's logits: attention is not causal.
        assert (model(input_ids=changed).logits[0, 0] - logits[0, 0]).abs().max() > 1e-4


def test_loads_through_headattr_models() -> None:
    from headattr.models import load_model

    spec = load_model(MODEL_DIR, device="cpu")
    assert spec.logit_shift is True
    assert spec.mask_token_id == json.loads((MODEL_DIR / "config.json").read_text())["mask_token_id"]
    assert (spec.num_layers, spec.num_heads) == (6, 8)


@pytest.mark.parametrize("task", demo_tasks.TASKS)
def test_model_solves_heldout_examples(demo, task: str) -> None:
    model, tokenizer = demo
    examples = _dataset_by_task()[task][:40]
    assert all(demo_tasks.is_heldout(example) for example in examples)
    accuracy = demo_train.masked_accuracy(model, tokenizer, examples, rate=0.5, seed=1)
    assert accuracy > ACCURACY_FLOOR[task], f"{task}: masked-token accuracy {accuracy:.3f}"


def test_dataset_fields_and_tasks() -> None:
    rows = demo_tasks.read_dataset(DATA_FILE)
    assert all(set(row) == {"prompt", "answer", "task"} for row in rows)
    assert all(row["prompt"] and row["answer"] for row in rows)
    counts = Counter(row["task"] for row in rows)
    assert set(counts) == set(demo_tasks.TASKS)
    assert len(set(counts.values())) == 1
    assert rows == demo_tasks.demo_dataset()  # reproducible from its seed


def test_task_answers_are_correct() -> None:
    rng = demo_tasks.random.Random(5)
    for _ in range(50):
        kv = demo_tasks.kv_example(rng)
        pairs, query = kv["prompt"].split(";")
        assert dict(pair.split("=") for pair in pairs.split(","))[query] == kv["answer"]
        rev = demo_tasks.reverse_example(rng)
        assert rev["prompt"] == f"rev:{rev['answer'][::-1]}="
        add = demo_tasks.add_example(rng)
        a, b = add["prompt"].rstrip("=").split("+")
        assert int(add["answer"]) == int(a) + int(b) and len(add["answer"]) == demo_tasks.ADD_WIDTH + 1
    train_stream = demo_tasks.stream(0)
    assert not any(demo_tasks.is_heldout(next(train_stream)) for _ in range(200))


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_is_one_id_per_character() -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    for text in ["a=31,k=72,x=15;k", "copy:hello=", " spaced  out ", "83+57=140"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert ids == [tokenizer.convert_tokens_to_ids(ch) for ch in text]
        assert tokenizer.decode(ids) == text
        assert tokenizer(text)["input_ids"] == ids  # nothing is added by default either
    specials = {tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id}
    assert len(specials) == 3 and None not in specials


# ---------------------------------------------------------------- training entry point


def test_training_smoke(tmp_path) -> None:
    cfg = demo_train.TrainConfig(
        steps=3,
        batch_size=8,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        warmup_steps=1,
    )
    model, tokenizer = demo_train.train(cfg, tmp_path, log=False)
    loaded, loaded_tokenizer = demo_train.load_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["num_hidden_layers"] == 2
    ids = torch.tensor([demo_train.encode(demo_tasks.add_example(demo_tasks.random.Random(0)), tokenizer)[0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded_tokenizer.mask_token_id == tokenizer.mask_token_id
    # Same seed, same weights.
    again, _ = demo_train.train(cfg, None, log=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_training_command_exposes_every_setting(tmp_path, capsys) -> None:
    args = demo_train.parse_args([])
    assert demo_train.TrainConfig(**{name: getattr(args, name) for name in demo_train.CLI_FIELDS}) == (
        demo_train.TrainConfig()
    )
    threads = torch.get_num_threads()
    try:
        demo_train.main(
            [
                "--out",
                str(tmp_path),
                "--no-data",
                "--eval-per-task",
                "2",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--hidden-size",
                "32",
                "--num-layers",
                "1",
                "--num-heads",
                "4",
                "--num-kv-heads",
                "4",
                "--head-dim",
                "4",
                "--intermediate-size",
                "32",
                "--warmup-steps",
                "1",
                "--weight-decay",
                "0",
            ]
        )
    finally:
        torch.set_num_threads(threads)  # main sets --threads for the whole process
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["head_dim"], config["num_key_value_heads"], config["num_hidden_layers"]) == (4, 4, 1)
    assert json.loads((tmp_path / "training_args.json").read_text())["weight_decay"] == 0.0
    assert "held-out, 2 per task" in capsys.readouterr().out


def test_padding_is_invisible_to_real_tokens(demo) -> None:
    model, tokenizer = demo
    rng = demo_tasks.random.Random(2)
    examples = [demo_tasks.kv_example(rng), demo_tasks.copy_example(rng), demo_tasks.add_example(rng)]
    batch = demo_train.make_batch(examples, tokenizer)
    with torch.no_grad():
        padded = model(input_ids=batch.ids, attention_mask=batch.attention_mask()).logits
        for row, example in enumerate(examples):
            ids = torch.tensor([demo_train.encode(example, tokenizer)[0]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(padded[row, : ids.shape[1]], alone, atol=1e-4, rtol=1e-4)


def test_eos_padding_is_marked_and_trained_on() -> None:
    tokenizer = build_tokenizer()
    examples = [
        {"prompt": "12+30=", "answer": "042", "task": "add"},
        {"prompt": "copy:abcd=", "answer": "abcd", "task": "copy"},
    ]
    batch = demo_train.make_batch(examples, tokenizer, [12, 0])
    assert batch.answer.sum(dim=1).tolist() == [12, 4] and batch.eos.sum(dim=1).tolist() == [9, 0]
    assert not (batch.eos & ~batch.answer).any()
    start = 1 + len("12+30=")
    assert tokenizer.decode(batch.ids[0, start : start + 3]) == "042"
    assert (batch.ids[0, start + 3 : start + 12] == tokenizer.eos_token_id).all()


def test_eos_padding_adds_to_the_loss_without_diluting_the_answer() -> None:
    tokenizer = build_tokenizer()
    example = {"prompt": "12+30=", "answer": "042", "task": "add"}
    batch = demo_train.make_batch([example, example], tokenizer, [0, 12])
    ones = torch.ones(batch.ids.shape)
    rate = torch.ones(2)
    answer_only = batch.answer & ~batch.eos
    # every answer token masked: a mean of 1 per real answer token, with or without EOS after the answer
    torch.testing.assert_close(demo_train.weighted_loss(ones, answer_only, rate, batch), torch.ones(2))
    # the 9 EOS tokens add 9 / 3 on top instead of shrinking the answer's share to 3 / 12
    torch.testing.assert_close(demo_train.weighted_loss(ones, batch.answer, rate, batch), torch.tensor([1.0, 4.0]))


def test_training_batches_mix_answers_with_and_without_eos() -> None:
    def windows(seed: int) -> list[int]:
        stream = demo_train.batches(seed, 32, eos_window=12, eos_fraction=0.5)
        return [window for _, batch in zip(range(40), stream, strict=False) for _, window in batch]

    drawn = windows(0)
    assert set(drawn) == {0, 12} and 0.45 < drawn.count(12) / len(drawn) < 0.55
    assert drawn == windows(0) and drawn != windows(1)
    assert {window for batch in [next(demo_train.batches(0, 32))] for _, window in batch} == {0}


# ---------------------------------------------------------------- decoder


def test_unmask_decode_solves_an_easy_example(demo) -> None:
    model, tokenizer = demo
    example = {"prompt": "copy:abcd=", "answer": "abcd", "task": "copy"}
    ids, start = demo_train.encode(example, tokenizer)
    batch = torch.tensor([ids])
    positions = torch.arange(start, len(ids))
    decoded = unmask_decode(lambda x: model(input_ids=x).logits, batch, positions, tokenizer.mask_token_id, shift=True)
    assert tokenizer.decode(decoded[0, start:]) == "abcd"


MASK, VOCAB = 0, 12


def chain_logits_fn(target: torch.Tensor, shift: bool, calls: list[torch.Tensor]):
    """A fake model that knows `target` ([B, T]) but can only 'see' one step ahead.

    An answer position is predicted right (confidence high) only when its left neighbour is already
    unmasked; otherwise it predicts token 1 with low confidence. Position order of confidence is
    reversed (later positions more confident) so that left-to-right commits come from the rule, not from
    position ties. The prediction for position j is written at j-1 when `shift`, else at j.
    """

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        calls.append(ids.clone())
        batch, length = ids.shape
        logits = torch.zeros(batch, length, VOCAB)
        for b in range(batch):
            for j in range(1, length):
                ready = ids[b, j - 1] != MASK
                token = int(target[b, j]) if ready else 1
                strength = 10.0 + j if ready else 1.0
                logits[b, j - 1 if shift else j, token] = strength
        return logits

    return logits_fn


@pytest.mark.parametrize("shift", [True, False])
def test_unmask_decode_commits_one_token_a_step_by_confidence(shift: bool) -> None:
    target = torch.tensor([[5, 3, 7, 2, 9, 4], [5, 8, 8, 6, 3, 2]])
    start = torch.full_like(target, 11)
    start[:, :2] = target[:, :2]
    calls: list[torch.Tensor] = []
    decoded = unmask_decode(chain_logits_fn(target, shift, calls), start, [2, 3, 4, 5], MASK, shift=shift)
    assert torch.equal(decoded, target)
    assert len(calls) == 4
    assert (calls[0][:, 2:] == MASK).all()  # the answer starts fully masked whatever the input held
    for step, ids in enumerate(calls):
        assert ((ids[:, 2:] == MASK).sum(dim=1) == 4 - step).all()  # one commit per step, in every row
        assert torch.equal(ids[:, 2 : 2 + step], target[:, 2 : 2 + step])  # left to right, by confidence


@pytest.mark.parametrize("shift", [True, False])
def test_unmask_decode_reads_the_convention_it_is_told(shift: bool) -> None:
    target = torch.tensor([[5, 3, 7, 2, 9, 4]])
    fake = chain_logits_fn(target, shift, [])
    right = unmask_decode(fake, target, [2, 3, 4, 5], MASK, shift=shift)
    wrong = unmask_decode(fake, target, [2, 3, 4, 5], MASK, shift=not shift)
    assert torch.equal(right, target)
    assert not torch.equal(wrong, target)


def test_unmask_decode_steps_and_checks() -> None:
    target = torch.tensor([[5, 3, 7, 2, 9, 4]])
    calls: list[torch.Tensor] = []
    fake = chain_logits_fn(target, True, calls)
    # All at once: only the first answer token can be right (its neighbour is visible).
    once = unmask_decode(fake, target, [2, 3, 4, 5], MASK, shift=True, steps=1)
    assert len(calls) == 1 and once[0, 2] == 7 and torch.equal(once[0, 3:], torch.ones(3, dtype=torch.long))
    calls.clear()
    twice = unmask_decode(fake, target, [2, 3, 4, 5], MASK, shift=True, steps=2)
    assert len(calls) == 2 and not torch.equal(twice, target)
    with pytest.raises(ValueError):
        unmask_decode(fake, target, [0, 1], MASK, shift=True)  # position 0 has no predecessor
    with pytest.raises(ValueError):
        unmask_decode(fake, target, [2, 2], MASK, shift=True)
    assert torch.equal(unmask_decode(fake, target, [], MASK, shift=True), target)
