"""Block-diffusion samplers (SDAR, LLaDA 2) and LLaDA-MoE's generation against plain-loop restatements.

The references run one prompt, without cache or batching, through the model's own whole forward pass with a
4D float block-causal mask built here position by position (query i sees key j iff j // B <= i // B), and
choose tokens in explicit loops over positions, written from the procedures in the spec
(`../shared/spec/model-formats.md`): SDAR's `block_diffusion_generate`, LLaDA 2's `generate()`, LLaDA's
`generate()`. Sampled tokens are drawn as the official code draws them: one `torch.multinomial` call over the
block's positions, from a generator seeded with the seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from headattr.errors import HeadattrError
from headattr.generation.sampling import generate, sampler_for
from headattr.models import load_model
from headattr.testing import make_llada2_checkpoint, make_lladamoe_checkpoint, make_sdar_checkpoint

PROMPTS = [[1, 8, 9, 10, 11, 12], [1, 5], [1, 20, 21, 22, 23, 24, 25, 26, 27]]
# 3 is the tiny checkpoints' mask id: in a prompt's full block it stays (prefilled), in its tail it is generated
MASKED_PROMPT = [1, 3, 9, 10, 11, 12, 3]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("block-samplers")
    makers = {"sdar": make_sdar_checkpoint, "llada2": make_llada2_checkpoint, "lladamoe": make_lladamoe_checkpoint}
    return {name: make(base / name) for name, make in makers.items()}


@pytest.fixture(scope="module")
def specs(dirs):
    torch.set_num_threads(1)
    return {name: load_model(root, dtype="float64") for name, root in dirs.items()}


# ---------------------------------------------------------------- references


def block_causal_logits(spec, ids: list[int], block: int) -> torch.Tensor:
    """Logits [T, V] of the model's own forward pass over `ids` with a block-causal 4D float mask."""
    t = len(ids)
    mask = torch.zeros(1, 1, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            if j // block > i // block:
                mask[0, 0, i, j] = torch.finfo(torch.float64).min
    return spec.model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0]


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The official token distribution of one position [V]: / temperature, top-k, then top-p, to -inf."""
    if temperature > 0:
        logits = logits / temperature
    values = logits.tolist()
    if top_k > 0:
        kth = sorted(values, reverse=True)[top_k - 1]
        values = [v if v >= kth else -math.inf for v in values]
    if top_p < 1:
        order = sorted(range(len(values)), key=lambda i: -values[i])
        probs = torch.softmax(torch.tensor([values[i] for i in order], dtype=torch.float64), -1).tolist()
        total, keep = 0.0, set()
        for rank, i in enumerate(order):
            if rank == 0 or total <= top_p:  # keep tokens until the cumulative probability first exceeds top_p
                keep.add(i)
            total += probs[rank]
        values = [v if i in keep else -math.inf for i, v in enumerate(values)]
    return torch.softmax(torch.tensor(values, dtype=torch.float64), -1)


def choose(probs: list[torch.Tensor], temperature: float, gen: torch.Generator) -> tuple[list[int], list[float]]:
    """Tokens and their probabilities for a block's distributions: argmax at temperature 0, else one draw each
    (one multinomial call over the block, as the official code makes it)."""
    if temperature > 0:
        tokens = torch.multinomial(torch.stack(probs), 1, generator=gen)[:, 0].tolist()
    else:
        tokens = [int(torch.argmax(p)) for p in probs]
    return tokens, [float(p[t]) for p, t in zip(probs, tokens, strict=True)]


def commit_positions(conf: dict[int, float], count: int, threshold: float | None) -> list[int]:
    """Masked positions (keys of `conf`) to commit: all above `threshold` when at least `count` are, else the
    `count` most confident."""
    high = [j for j in conf if threshold is not None and conf[j] > threshold]
    if threshold is not None and len(high) >= count:
        return high
    return sorted(conf, key=lambda j: -conf[j])[:count]


def reference_block(spec, prompt, gen_length, block, steps, *, llada2, threshold, temp=0.0, top_k=0, top_p=1.0,
                    strategy="low_confidence_dynamic", stops=(2,), seed=0):  # fmt: skip
    """SDAR's (or with `llada2`, LLaDA 2's) sampler on one prompt, no cache; the first gen_length tokens."""
    gen = torch.Generator().manual_seed(seed)
    mask = spec.mask_token_id
    total = -(-(len(prompt) + gen_length) // block) * block
    x = list(prompt) + [mask] * (total - len(prompt))
    schedule = [block // steps + (1 if i < block % steps else 0) for i in range(steps)]
    for k in range(len(prompt) // block, total // block):
        a, e = k * block, (k + 1) * block
        for step in range(steps):
            masked = [j for j in range(a, e) if x[j] == mask]
            if not masked:
                break
            logits = block_causal_logits(spec, x[:e], block)  # every step: the whole prefix, no cache
            tokens, probs = choose([filtered_probs(logits[j], temp, top_k, top_p) for j in range(a, e)], temp, gen)
            if strategy == "sequential":
                chosen = masked[: schedule[step]]
            else:
                conf = {j: probs[j - a] for j in masked}
                chosen = commit_positions(conf, min(schedule[step], len(masked)), threshold)
            for j in chosen:
                x[j] = tokens[j - a]
        if any(t in stops for t in x[len(prompt) : e]):
            break
    return x[: len(prompt) + gen_length]


def reference_llada(spec, prompt, gen_length, steps, block_length):
    """LLaDA's sampler (low-confidence remasking, temperature 0) on one prompt, bidirectional, in plain loops."""
    mask = spec.mask_token_id
    x = list(prompt) + [mask] * gen_length
    per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        start, end = len(prompt) + b * block_length, len(prompt) + (b + 1) * block_length
        n = sum(1 for j in range(start, end) if x[j] == mask)
        schedule = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for i in range(per_block):
            logits = spec.model(input_ids=torch.tensor([x])).logits[0]
            conf, tokens = {}, {}
            for j in range(start, end):
                if x[j] == mask:
                    tokens[j] = int(torch.argmax(logits[j]))
                    conf[j] = float(torch.softmax(logits[j], -1)[tokens[j]])
            for j in sorted(conf, key=lambda j: -conf[j])[: schedule[i]]:
                x[j] = tokens[j]
    return x


def _row(out: torch.Tensor, b: int, prompt: list[int], n: int) -> list[int]:
    """Row b of a batch result: its prompt (without padding) and its n generated tokens."""
    return out[b, out.shape[1] - n - len(prompt) :].tolist()


# ---------------------------------------------------------------- SDAR


SDAR_CASES = [
    {"gen_length": 8, "steps": 4},
    {"gen_length": 7, "steps": 2, "remasking_strategy": "low_confidence_static"},
    {"gen_length": 9, "steps": 3, "confidence_threshold": 0.05},
    {"gen_length": 6, "steps": 4, "remasking_strategy": "sequential"},
    {"gen_length": 10, "steps": 2, "block_length": 3, "top_k": 5, "top_p": 0.9},
]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
@pytest.mark.parametrize("case", SDAR_CASES)
def test_sdar_matches_reference(specs, case, temperature):
    spec = specs["sdar"]
    settings = {**case, "temperature": temperature, "stop_ids": (99,)}
    block = case.get("block_length", spec.block_size)
    strategy = case.get("remasking_strategy", "low_confidence_dynamic")
    threshold = case.get("confidence_threshold", 0.85) if strategy == "low_confidence_dynamic" else None
    for prompt in [*PROMPTS, MASKED_PROMPT]:
        got = generate(spec, prompt, seed=3, **settings)[0].tolist()
        want = reference_block(
            spec, prompt, case["gen_length"], block, case["steps"], llada2=False, threshold=threshold, temp=temperature,
            top_k=case.get("top_k", 0), top_p=case.get("top_p", 1.0), strategy=strategy, stops=(99,), seed=3,
        )  # fmt: skip
        assert got == want, (prompt, settings)


def test_sdar_greedy_top_k_1_commits_the_whole_block_at_once(specs, monkeypatch):
    """top_k 1 makes every confidence 1 (> 0.85): a block takes one denoising pass, then one pass that stores it
    in the cache (none after the last block); the prompt's full blocks take one prefill pass."""
    from headattr.generation import sampling

    spec, prompt = specs["sdar"], [1, 5, 6, 7, 8, 9]
    calls = []
    real = sampling.block_logits

    def spy(spec, x, valid, gates, lo, attention):
        calls.append((x.shape[1], attention.store))
        return real(spec, x, valid, gates, lo, attention)

    monkeypatch.setattr(sampling, "block_logits", spy)
    out = generate(spec, prompt, gen_length=6, top_k=1, stop_ids=(99,))[0].tolist()
    assert out == reference_block(spec, prompt, 6, 4, 4, llada2=False, threshold=0.85, temp=1.0, top_k=1, stops=(99,))
    assert spec.mask_token_id not in out
    assert calls == [(4, True), (4, False), (4, True), (4, False)]


def test_sdar_stops_after_a_block_with_a_stop_id(specs):
    spec = specs["sdar"]
    prompt = PROMPTS[0]
    free = generate(spec, prompt, gen_length=16, temperature=0.0, stop_ids=(99,))[0].tolist()
    generated = free[len(prompt) :]
    stop = generated[5]  # a token generated in the second generated block (positions 8..11)
    first = generated.index(stop)
    end = -(-(len(prompt) + first + 1) // 4) * 4  # the end of the block that first holds it
    out = generate(spec, prompt, gen_length=16, temperature=0.0, stop_ids=(stop,))[0].tolist()
    assert out[:end] == free[:end]
    assert all(t == spec.mask_token_id for t in out[end:])
    assert out == reference_block(spec, prompt, 16, 4, 4, llada2=False, threshold=0.85, stops=(stop,))


# ---------------------------------------------------------------- LLaDA 2

LLADA2_CASES = [
    {"gen_length": 8, "steps": 4, "block_length": 4},
    {"gen_length": 10, "steps": 3, "block_length": 4, "threshold": 0.1},
    {"gen_length": 12, "steps": 8, "block_length": 8, "threshold": 0.0},
    {"gen_length": 7, "steps": 5, "block_length": 5, "minimal_topk": 2},
]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("case", LLADA2_CASES)
def test_llada2_matches_reference(specs, case, temperature):
    spec = specs["llada2"]
    settings = {**case, "temperature": temperature, "eos_ids": (99,)}
    steps = min(case["steps"], case["gen_length"] // case.get("minimal_topk", 1))
    for prompt in [*PROMPTS, MASKED_PROMPT]:
        got = generate(spec, prompt, seed=5, **settings)[0].tolist()
        want = reference_block(
            spec, prompt, case["gen_length"], case["block_length"], steps, llada2=True,
            threshold=case.get("threshold", 0.95), temp=temperature, stops=(99,), seed=5,
        )  # fmt: skip
        assert got == want, (prompt, settings)


def test_llada2_stops_after_a_block_with_eos(specs):
    spec = specs["llada2"]
    prompt, s = PROMPTS[1], {"gen_length": 16, "steps": 4, "block_length": 4}
    free = generate(spec, prompt, eos_ids=(99,), **s)[0].tolist()
    eos = free[len(prompt) + 3]
    out = generate(spec, prompt, eos_ids=(eos,), **s)[0].tolist()
    want = reference_block(spec, prompt, 16, 4, 4, llada2=True, threshold=0.95, stops=(eos,))
    assert out == want
    assert spec.mask_token_id in out and eos in out


def test_llada2_defaults_come_from_the_checkpoint_and_the_official_generate(specs):
    s = sampler_for(specs["llada2"]).defaults
    assert (s["gen_length"], s["steps"], s["threshold"], s["temperature"], s["block_length"]) == (
        2048,
        32,
        0.95,
        0,
        None,
    )
    sdar = sampler_for(specs["sdar"]).defaults
    assert (sdar["steps"], sdar["confidence_threshold"], sdar["remasking_strategy"]) == (
        4,
        0.85,
        "low_confidence_dynamic",
    )


# ---------------------------------------------------------------- LLaDA-MoE


@pytest.mark.parametrize(("gen_length", "steps", "block_length"), [(8, 8, 8), (8, 4, 4), (9, 6, 3)])
def test_lladamoe_generates_with_llada_sampler(specs, gen_length, steps, block_length):
    spec = specs["lladamoe"]
    assert sampler_for(spec).name == "llada"
    for prompt in PROMPTS:
        got = generate(spec, prompt, gen_length=gen_length, steps=steps, block_length=block_length)[0].tolist()
        assert got == reference_llada(spec, prompt, gen_length, steps, block_length)


# ---------------------------------------------------------------- batches, gates, errors

BATCH_CASES = [
    ("sdar", {"gen_length": 9, "steps": 2, "temperature": 0.0, "stop_ids": (99,)}),
    ("sdar", {"gen_length": 9, "steps": 4, "temperature": 1.0, "stop_ids": (99,)}),
    ("sdar", {"gen_length": 12, "temperature": 0.0, "stop_ids": (16,)}),  # rows stop at different blocks
    ("llada2", {"gen_length": 9, "steps": 3, "block_length": 4, "temperature": 0.0, "eos_ids": (99,)}),
    ("llada2", {"gen_length": 9, "steps": 3, "block_length": 4, "temperature": 0.9}),
    ("llada2", {"gen_length": 12, "steps": 4, "block_length": 4, "eos_ids": (5,)}),  # rows stop at different blocks
]


@pytest.mark.parametrize(("name", "settings"), BATCH_CASES)
def test_batch_of_left_padded_prompts_equals_each_alone(specs, name, settings):
    spec = specs[name]
    n = settings["gen_length"]
    for pair in (PROMPTS[:2], [PROMPTS[2], MASKED_PROMPT], [PROMPTS[1], MASKED_PROMPT]):
        out = generate(spec, pair, seed=7, **settings)
        assert out.shape == (2, max(map(len, pair)) + n)
        for b, prompt in enumerate(pair):
            assert _row(out, b, prompt, n) == generate(spec, prompt, seed=7, **settings)[0].tolist()


@pytest.mark.parametrize(
    ("name", "settings"),
    [("sdar", {"gen_length": 12, "temperature": 0.0, "stop_ids": (99,)}), ("llada2", {"gen_length": 12, "steps": 4})],
)
def test_head_mask_changes_tokens_and_zero_gates_equal_it(specs, name, settings):
    spec = specs[name]
    plain = generate(spec, PROMPTS, **settings)
    heads = [(layer, h) for layer in range(spec.num_layers) for h in range(spec.num_heads)][::2]
    masked = generate(spec, PROMPTS, head_mask=heads, **settings)
    assert not torch.equal(plain, masked)
    gates = {layer: torch.ones(spec.num_heads, dtype=torch.float64) for layer in range(spec.num_layers)}
    for layer, h in heads:
        gates[layer][h] = 0
    assert torch.equal(generate(spec, PROMPTS, gates=gates, **settings), masked)
    assert torch.equal(generate(spec, PROMPTS, gates={0: torch.ones(spec.num_heads)}, **settings), plain)


def test_cached_pass_equals_the_whole_prefix(specs):
    """The KV-cached block pass gives the logits of the whole block-causal prefix at the block's positions."""
    from headattr.generation.blockattn import BlockAttention, KVCache
    from headattr.generation.sampling import _predictions

    spec = specs["sdar"]
    ids = torch.tensor([[1, 8, 9, 10, 11, 12, 3, 3, 3, 3, 14, 15]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    cache = KVCache()
    _predictions(spec, ids[:, :8], valid[:, :8], {}, 8, False, BlockAttention(4, cache, True))
    cached = _predictions(spec, ids[:, 8:], valid[:, 8:], {}, 0, False, BlockAttention(4, cache))
    whole = block_causal_logits(spec, ids[0].tolist(), 4)[8:]
    torch.testing.assert_close(cached[0], whole, rtol=1e-10, atol=1e-10)
    assert cache.length == 8  # the denoising pass did not join the cache


@pytest.mark.parametrize(
    ("name", "settings", "words"),
    [
        ("sdar", {"remasking_strategy": "greedy"}, "remasking_strategy"),
        ("sdar", {"steps": 0}, "steps"),
        ("sdar", {"top_p": 0.0}, "top_p"),
        ("sdar", {"block_length": 0}, "block_length"),
        ("llada2", {"threshold": 2.0}, "threshold"),
        ("llada2", {"minimal_topk": 99, "gen_length": 8}, "minimal_topk"),
        ("llada2", {"alg": "entropy"}, "Dream setting"),
    ],
)
def test_bad_settings_are_one_line_errors(specs, name, settings, words):
    with pytest.raises(HeadattrError, match=words) as err:
        generate(specs[name], [1, 2, 3], **settings)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- command line


def test_generate_command_on_tiny_sdar(dirs, tmp_path, capsys):
    from headattr.cli import main

    out = tmp_path / "gen.jsonl"
    args = ["generate", str(dirs["sdar"]), "--threads", "1", "--gen-length", "6", "--top-k", "1", "--seed", "2"]
    assert main([*args, "--prompt", "copy:abc=", "--prompt", "rev:ab=", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["generated_ids"]) == 6 for r in rows)
    spec = load_model(dirs["sdar"])
    for r in rows:  # the command's tokens are the API's (float32, as the command loads the model)
        want = generate(spec, r["prompt_ids"], gen_length=6, top_k=1, seed=2)[0, -6:].tolist()
        assert r["generated_ids"] == want
    assert main([*args, "--prompt", "x", "--alg", "entropy"]) == 2
    assert "Dream setting" in capsys.readouterr().err


def test_prune_eval_generate_on_tiny_sdar(dirs, tmp_path, capsys):
    from headattr.cli import main
    from headattr.demo import DATA_FILE

    model, run = str(dirs["sdar"]), str(tmp_path / "run")
    assert main(["attribute", model, "--data", str(DATA_FILE), "--out", run, "--samples", "3", "--ig-steps", "2"]) == 0
    args = ["prune", model, "--scores", run, "--out", str(tmp_path / "p"), "--fractions", "0.1", "--random-orders", "1"]
    flags = ["--eval-samples", "2", "--quiet", "--eval", "generate", "--task", "exact", "--gen-length", "4"]
    assert main([*args, *flags, "--top-k", "1"]) == 0
    assert "generated answers, task exact" in capsys.readouterr().out
    settings = json.loads((tmp_path / "p/pruning.json").read_text())["task"]["settings"]
    assert settings["gen_length"] == 4 and settings["top_k"] == 1 and settings["remasking_strategy"]


def test_lmeval_model_generates_with_the_sdar_sampler_and_scores_loglikelihood(dirs):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from headattr.generation import lmeval
    from headattr.generation.sampling import completion_text

    model = lmeval.HeadattrLM(pretrained=str(dirs["sdar"]), top_k=1, stop_ids=(99,))
    requests = [SimpleNamespace(args=(text, {"max_gen_toks": 6, "until": []})) for text in ("copy:ab=", "rev:abc=")]
    texts = model.generate_until(requests)
    for req, text in zip(requests, texts, strict=True):
        ids = model._encode(req.args[0])
        out = generate(model.spec, ids, gen_length=6, top_k=1, stop_ids=(99,), seed=model.seed)
        assert text == completion_text(model.spec, out[0, -6:])
    # the Monte-Carlo ELBO of SDAR's training loss (tests/test_block_likelihood.py checks its value)
    [(ll, greedy)] = model.loglikelihood([SimpleNamespace(args=("copy:ab=", "ab"))])
    assert math.isfinite(ll) and ll < 0 and greedy is False


def test_cli_flags_of_the_block_diffusion_samplers(dirs, tmp_path, capsys):
    """SDAR's commit rule and threshold and LLaDA 2's threshold and minimal k are flags; each reaches the sampler
    (the command's tokens equal the API's with the same settings) and is refused for another family."""
    from headattr.cli import main

    cases = {
        "sdar": (["--remasking-strategy", "low_confidence_static", "--confidence-threshold", "0.5"],
                 {"remasking_strategy": "low_confidence_static", "confidence_threshold": 0.5}),
        "llada2": (["--threshold", "0.3", "--minimal-topk", "2"], {"threshold": 0.3, "minimal_topk": 2}),
    }  # fmt: skip
    for name, (flags, settings) in cases.items():
        out = tmp_path / f"{name}.jsonl"
        args = ["generate", str(dirs[name]), "--threads", "1", "--gen-length", "6", "--seed", "2", *flags]
        assert main([*args, "--prompt", "copy:abc=", "--out", str(out)]) == 0
        row = json.loads(out.read_text().splitlines()[0])
        spec = load_model(dirs[name])
        assert (
            row["generated_ids"] == generate(spec, row["prompt_ids"], gen_length=6, seed=2, **settings)[0, -6:].tolist()
        )
    capsys.readouterr()
    assert main(["generate", str(dirs["llada2"]), "--prompt", "x", "--confidence-threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "SDAR setting" in err and "\n" not in err
