"""Generation: `headattr.generate` against plain re-statements of the official Dream and LLaDA samplers.

The references below run one prompt at a time through the whole model (`reference.full_logits`, not the layer
stack `generate` uses), with plain Python loops over positions, written from the official procedures:
Dream's `diffusion_generate` (DreamLM/Dream) and LLaDA's `generate()` (ML-GSAI/LLaDA). Randomness is drawn
from torch's global generator after `torch.manual_seed(seed)`, in the official order.
"""

from __future__ import annotations

import json

import pytest
import torch

from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.errors import HeadattrError
from headattr.generation.sampling import completion_ids, completion_text, generate
from headattr.methods.reference import full_logits
from headattr.models import load_model

PROMPTS = [[1, 8, 9, 10], [1, 20, 21, 22, 23, 24, 25], [1, 5], [1, 12, 3, 14, 15, 16]]  # 3 = mask id in a prompt


# ---------------------------------------------------------------- references


def _probs(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's token distribution of one position's logits [V] (temperature, then top-p, then top-k)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        order = torch.argsort(logits, descending=True, stable=True)
        probs = torch.softmax(logits[order], dim=-1)
        total, keep = 0.0, []
        for rank, idx in enumerate(order.tolist()):
            if rank == 0 or total <= top_p:  # keep tokens until the cumulative probability first exceeds top_p
                keep.append(idx)
            total += float(probs[rank])
        filtered = torch.full_like(logits, torch.finfo(logits.dtype).min)
        filtered[keep] = logits[keep]
        logits = filtered
    if top_k is not None:
        kth = sorted(logits.tolist(), reverse=True)[top_k - 1]
        logits = torch.where(logits < kth, torch.finfo(logits.dtype).min, logits)
    return torch.softmax(logits, dim=-1)


def _dream_confidence(p: torch.Tensor, alg: str) -> float:
    if alg == "maskgit_plus":
        return float(p.max())
    if alg == "topk_margin":
        top = sorted(p.tolist(), reverse=True)
        return top[0] - top[1]
    return float(sum(q * torch.log(q + 1e-10) for q in p))  # entropy: minus the entropy


def reference_dream(spec, prompt, max_new_tokens, steps, alg, *, top_p=None, top_k=None, eps=1e-3, seed=0):
    """Dream's sampler at temperature 0 for one prompt, in plain loops."""
    torch.manual_seed(seed)
    mask = spec.mask_token_id
    x = list(prompt) + [mask] * max_new_tokens
    times = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        logits = full_logits(spec, torch.tensor([x]))[0]
        logits = torch.cat([logits[:1], logits[:-1]])  # the token at j is predicted at j - 1
        masked = [j for j in range(len(x)) if x[j] == mask]
        t, s = times[i], times[i + 1]
        last = i == steps - 1
        if alg == "origin":
            p_move = 1 - s / t if not last else 1
            draws = torch.rand(len(masked))
            for k, j in enumerate(masked):
                if draws[k] < p_move:
                    x[j] = int(torch.argmax(_probs(logits[j], 0.0, top_p, top_k)))
            continue
        tokens, conf = {}, {}
        for j in masked:
            p = _probs(logits[j], 0.0, top_p, top_k)
            tokens[j], conf[j] = int(torch.argmax(p)), _dream_confidence(p, alg)
        n = torch.tensor(float(len(masked)))
        count = int(n * (1 - s / t)) if not last else len(masked)
        for j in sorted(masked, key=lambda j: -conf[j])[:count]:  # the most confident first
            x[j] = tokens[j]  # the mask token itself when it is the argmax: the position stays masked
    return x


def reference_llada(spec, prompt, gen_length, steps, block_length, remasking, *, cfg_scale=0.0, seed=0):
    """LLaDA's sampler at temperature 0 for one prompt, in plain loops."""
    torch.manual_seed(seed)
    mask = spec.mask_token_id
    x = list(prompt) + [mask] * gen_length
    is_prompt = [t != mask for t in x]
    blocks = gen_length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        start, end = len(prompt) + b * block_length, len(prompt) + (b + 1) * block_length
        n_block = sum(1 for j in range(start, end) if x[j] == mask)
        schedule = [n_block // per_block + (1 if i < n_block % per_block else 0) for i in range(per_block)]
        for i in range(per_block):
            logits = full_logits(spec, torch.tensor([x]))[0]
            if cfg_scale > 0:
                un = [mask if is_prompt[j] else x[j] for j in range(len(x))]
                un_logits = full_logits(spec, torch.tensor([un]))[0]
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            draws = torch.rand((1, len(x)))[0] if remasking == "random" else None
            conf = {}
            tokens = {}
            for j in range(len(x)):
                if x[j] != mask or j >= end:
                    continue
                tokens[j] = int(torch.argmax(logits[j]))
                conf[j] = float(draws[j]) if draws is not None else float(torch.softmax(logits[j], -1)[tokens[j]])
            for j in sorted(conf, key=lambda j: -conf[j])[: schedule[i]]:
                x[j] = tokens[j]
    return x


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def builtin():
    torch.set_num_threads(1)
    return load_model(MODEL_DIR, dtype="float64")


def _builtin_prompts(spec, n: int = 4) -> list[list[int]]:
    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines()[:n]]
    return [
        [spec.tokenizer.bos_token_id, *spec.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]] for r in rows
    ]


def _alone(spec, prompts, **settings) -> list[list[int]]:
    return [generate(spec, p, **settings)[0].tolist() for p in prompts]


# ---------------------------------------------------------------- Dream


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_dream_matches_reference(dream, alg):
    for seed, prompt in enumerate(PROMPTS):
        got = generate(dream, prompt, max_new_tokens=7, steps=5, alg=alg, seed=seed)[0].tolist()
        assert got == reference_dream(dream, prompt, 7, 5, alg, seed=seed)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_dream_matches_reference_with_top_p_top_k_and_many_steps(dream, alg):
    prompt = PROMPTS[1]
    got = generate(dream, prompt, max_new_tokens=6, steps=9, alg=alg, top_p=0.5, top_k=5)[0].tolist()
    assert got == reference_dream(dream, prompt, 6, 9, alg, top_p=0.5, top_k=5)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_builtin_model_matches_reference(builtin, alg):
    for prompt in _builtin_prompts(builtin, 2):
        got = generate(builtin, prompt, max_new_tokens=6, steps=4, alg=alg)[0].tolist()
        assert got == reference_dream(builtin, prompt, 6, 4, alg)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_dream_batch_of_different_lengths_equals_each_alone(dream, builtin, alg):
    for spec, prompts in ((dream, PROMPTS), (builtin, _builtin_prompts(builtin))):
        batched = generate(spec, prompts, max_new_tokens=6, steps=4, alg=alg)
        width = max(len(p) for p in prompts)
        for row, prompt, alone in zip(
            batched, prompts, _alone(spec, prompts, max_new_tokens=6, steps=4, alg=alg), strict=True
        ):
            assert row[width - len(prompt) :].tolist() == alone


def test_dream_mask_token_as_argmax_stays_masked(dream_dir):
    spec = load_model(dream_dir, dtype="float64")
    with torch.no_grad():  # make the mask token the most likely prediction almost everywhere
        spec.model.lm_head.weight[spec.mask_token_id] *= 40
    prompt = PROMPTS[0]
    got = generate(spec, prompt, max_new_tokens=6, steps=3, alg="maskgit_plus")[0].tolist()
    assert got == reference_dream(spec, prompt, 6, 3, "maskgit_plus")
    assert spec.mask_token_id in got[len(prompt) :]


# ---------------------------------------------------------------- LLaDA


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize(("gen_length", "steps", "block_length"), [(8, 8, 8), (8, 4, 4), (9, 6, 3), (6, 6, 2)])
def test_llada_matches_reference(llada, remasking, gen_length, steps, block_length):
    for seed, prompt in enumerate(PROMPTS):
        settings = {"gen_length": gen_length, "steps": steps, "block_length": block_length, "remasking": remasking}
        got = generate(llada, prompt, seed=seed, **settings)[0].tolist()
        assert got == reference_llada(llada, prompt, gen_length, steps, block_length, remasking, seed=seed)


def test_llada_classifier_free_guidance_matches_reference(llada):
    prompt = PROMPTS[1]
    got = generate(llada, prompt, gen_length=6, steps=6, block_length=3, cfg_scale=1.5)[0].tolist()
    assert got == reference_llada(llada, prompt, 6, 6, 3, "low_confidence", cfg_scale=1.5)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_llada_batch_of_different_lengths_equals_each_alone(llada, remasking):
    settings = {"gen_length": 8, "steps": 4, "block_length": 4, "remasking": remasking, "cfg_scale": 0.5}
    batched = generate(llada, PROMPTS, **settings)
    width = max(len(p) for p in PROMPTS)
    for row, prompt, alone in zip(batched, PROMPTS, _alone(llada, PROMPTS, **settings), strict=True):
        assert row[width - len(prompt) :].tolist() == alone


def test_llada_blocks_fill_left_to_right(llada, monkeypatch):
    """Block 2 stays fully masked until block 1 has had its steps; each step commits its scheduled count."""
    seen = []
    original = llada.backbone.embed

    def spy(ids):
        seen.append(ids[0].clone())
        return original(ids)

    monkeypatch.setattr(llada.backbone, "embed", spy)
    generate(llada, PROMPTS[0], gen_length=8, steps=4, block_length=4)
    monkeypatch.undo()
    p, mask = len(PROMPTS[0]), llada.mask_token_id
    assert len(seen) == 4  # 2 steps per block
    block1 = [int((x[p : p + 4] != mask).sum()) for x in seen]
    block2 = [int((x[p + 4 :] != mask).sum()) for x in seen]
    assert block1 == [0, 2, 4, 4] and block2 == [0, 0, 0, 2]


# ---------------------------------------------------------------- sampling, gates, settings


@pytest.mark.parametrize(
    ("fixture", "settings"),
    [
        ("dream", {"max_new_tokens": 6, "steps": 3, "alg": "entropy", "temperature": 0.8, "top_p": 0.9}),
        ("dream", {"max_new_tokens": 6, "steps": 3, "alg": "maskgit_plus", "temperature": 1.0, "alg_temp": 0.5}),
        ("llada", {"gen_length": 6, "steps": 3, "block_length": 6, "temperature": 1.0}),
    ],
)
def test_sampling_is_seeded_reproducible_and_batch_independent(request, fixture, settings):
    spec = request.getfixturevalue(fixture)
    a = generate(spec, PROMPTS, seed=5, **settings)
    assert torch.equal(a, generate(spec, PROMPTS, seed=5, **settings))
    draws = {tuple(generate(spec, PROMPTS[1], seed=s, **settings)[0].tolist()) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    width = max(len(p) for p in PROMPTS)
    for row, prompt in zip(a, PROMPTS, strict=True):
        assert row[width - len(prompt) :].tolist() == generate(spec, prompt, seed=5, **settings)[0].tolist()


def test_llada_sampling_draws_as_the_official_code(llada):
    """Temperature > 0 at batch size 1: Gumbel noise in float64 from the global stream, as add_gumbel_noise."""
    prompt, mask = PROMPTS[0], llada.mask_token_id
    got = generate(llada, prompt, seed=3, gen_length=4, steps=4, block_length=4, temperature=0.7)[0].tolist()
    torch.manual_seed(3)
    x = torch.tensor([prompt + [mask] * 4])
    for count in (1, 1, 1, 1):
        logits = full_logits(llada, x)
        noise = torch.rand_like(logits, dtype=torch.float64)
        noisy = logits.to(torch.float64).exp() / (-torch.log(noise)) ** 0.7
        tokens = noisy.argmax(-1)
        p = torch.softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
        conf = torch.where(x == mask, p, -torch.inf)
        j = int(conf[0].argmax())
        x[0, j] = tokens[0, j]
        assert count == 1
    assert got == x[0].tolist()


@pytest.mark.parametrize("fixture", ["dream", "llada"])
def test_zero_gates_equal_the_pruned_model(request, fixture, dream_dir, llada_dir):
    spec = request.getfixturevalue(fixture)
    removed = [(0, 1), (1, 0), (1, 3), (2, 2)]
    pruned = load_model(dream_dir if fixture == "dream" else llada_dir, dtype="float64")
    d = pruned.head_dim
    with torch.no_grad():
        for layer, head in removed:
            pruned.head_modules[layer].weight[:, head * d : (head + 1) * d] = 0.0
    settings = (
        {"max_new_tokens": 6, "steps": 3} if fixture == "dream" else {"gen_length": 6, "steps": 3, "block_length": 6}
    )
    gated = generate(spec, PROMPTS, head_mask=removed, **settings)
    assert torch.equal(gated, generate(pruned, PROMPTS, **settings))
    assert not torch.equal(gated, generate(spec, PROMPTS, **settings))  # removing the heads changes the output


def test_per_row_gates(dream):
    """Rows with their own gates ([B, H]) equal each row generated under its gates alone."""
    gates = {1: torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)}
    both = generate(dream, [PROMPTS[1], PROMPTS[1]], gates=gates, max_new_tokens=6, steps=3)
    assert both[0].tolist() == generate(dream, PROMPTS[1], max_new_tokens=6, steps=3)[0].tolist()
    one = generate(dream, PROMPTS[1], gates={1: gates[1][1]}, max_new_tokens=6, steps=3)[0].tolist()
    assert both[1].tolist() == one


@pytest.mark.parametrize(
    ("fixture", "settings", "words"),
    [
        ("dream", {"gen_length": 8}, "LLaDA setting"),
        ("dream", {"remasking": "random"}, "LLaDA setting"),
        ("llada", {"alg": "entropy"}, "Dream setting"),
        ("llada", {"max_new_tokens": 8}, "Dream setting"),
        ("llada", {"beams": 2}, "not a generation setting"),
        ("dream", {"alg": "greedy"}, "unknown alg"),
        ("llada", {"gen_length": 10, "block_length": 4}, "multiple of block_length"),
        ("llada", {"gen_length": 8, "block_length": 4, "steps": 3}, "multiple of the number of blocks"),
    ],
)
def test_bad_settings_are_one_line_errors(request, fixture, settings, words):
    spec = request.getfixturevalue(fixture)
    with pytest.raises(HeadattrError, match=words) as err:
        generate(spec, PROMPTS[0], **settings)
    assert "\n" not in str(err.value)


def test_right_padding_is_refused(dream):
    ids = torch.tensor([[1, 8, 9, 0], [1, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(HeadattrError, match="left-padded"):
        generate(dream, ids, attention_mask=mask, max_new_tokens=2, steps=1)


def test_attention_mask_input_equals_list_input(dream):
    ids = torch.tensor([[0, 0, 0, 1, 8, 9, 10], [1, 20, 21, 22, 23, 24, 25]])
    mask = (torch.arange(7)[None] >= torch.tensor([[3], [0]])).long()
    a = generate(dream, ids, attention_mask=mask, max_new_tokens=5, steps=3)
    b = generate(dream, [PROMPTS[0], PROMPTS[1]], max_new_tokens=5, steps=3)
    assert torch.equal(a[:, 3:], b[:, 3:]) and torch.equal(a[1], b[1])


def test_completion_is_cut_at_eos(dream):
    eos = dream.tokenizer.eos_token_id
    assert completion_ids(dream, [8, 9, eos, 10]) == [8, 9]
    assert completion_text(dream, torch.tensor([8, 9, eos, 10])) == dream.tokenizer.decode([8, 9])
    assert completion_ids(dream, [8, dream.mask_token_id]) == [8, dream.mask_token_id]


# ---------------------------------------------------------------- logits only where they are read (issue 24)

DREAM_SHORT = {"max_new_tokens": 3, "steps": 2, "alg": "maskgit_plus"}
LLADA_SHORT = {"gen_length": 4, "steps": 2, "block_length": 4}
DREAM_SAMPLED = {"max_new_tokens": 4, "steps": 2, "alg": "entropy", "temperature": 0.8}
LLADA_SAMPLED = {"gen_length": 4, "steps": 2, "block_length": 4, "temperature": 1.0}


@pytest.mark.parametrize("fixture, settings", [("dream", DREAM_SHORT), ("llada", LLADA_SHORT)])
def test_the_lm_head_runs_only_at_the_positions_the_sampler_reads(request, fixture, settings):
    # before, every step computed [B, T, V] logits (and Dream copied them again for its shift) and read only the
    # generated positions: at batch 64 and 556 tokens, 11 GB per step at Dream's vocabulary
    spec = request.getfixturevalue(fixture)
    positions = []
    handle = spec.backbone.lm_head.register_forward_hook(lambda m, args, out: positions.append(args[0].shape[-2]))
    try:
        generate(spec, [p * 4 for p in PROMPTS[:3]], **settings)  # PROMPTS[3] holds a mask token
    finally:
        handle.remove()
    new_tokens = settings.get("max_new_tokens", settings.get("gen_length"))
    assert positions and max(positions) <= new_tokens


def test_dream_reads_mask_tokens_inside_prompts_as_the_reference_does(dream):
    # the official sampler fills every mask token of the sequence, prompt included: the positions read then
    # start inside the prompt, and for the shorter rows of a batch before their padding ends
    mask = dream.mask_token_id
    prompts = [[*PROMPTS[1][:2], mask, *PROMPTS[1][2:]], PROMPTS[0], PROMPTS[2]]
    for seed, prompt in enumerate(prompts):
        got = generate(dream, prompt, max_new_tokens=4, steps=3, alg="maskgit_plus", seed=seed)[0].tolist()
        assert got == reference_dream(dream, prompt, 4, 3, "maskgit_plus", seed=seed)
    settings = {"max_new_tokens": 4, "steps": 3, "alg": "maskgit_plus"}
    batched = generate(dream, prompts, **settings)
    width = max(len(p) for p in prompts)
    for row, prompt, alone in zip(batched, prompts, _alone(dream, prompts, **settings), strict=True):
        assert row[width - len(prompt) :].tolist() == alone


@pytest.mark.parametrize("fixture, settings", [("dream", DREAM_SAMPLED), ("llada", LLADA_SAMPLED)])
def test_out_of_memory_halves_the_generation_batch_with_the_same_tokens(request, fixture, settings, monkeypatch):
    from headattr.generation import sampling as generation

    spec = request.getfixturevalue(fixture)
    want = generate(spec, PROMPTS, seed=3, **settings)
    real, sizes = generation._logits, []

    def tight(spec, ids, *args, **kwargs):  # a device that holds one row
        sizes.append(ids.shape[0])
        if ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.00 GiB")
        return real(spec, ids, *args, **kwargs)

    monkeypatch.setattr(generation, "_logits", tight)
    got = generate(spec, PROMPTS, seed=3, **settings)
    assert torch.equal(got, want) and sizes[0] == len(PROMPTS) and sizes[-1] == 1
    monkeypatch.setattr(generation, "_logits", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):  # only out-of-memory errors are retried
        generate(spec, PROMPTS, seed=3, **settings)


def test_top_p_cumulative_sum_has_a_deterministic_path(monkeypatch):
    # issue 24: CUDA's cumsum has no deterministic kernel; under --deterministic the sum runs on the CPU. Here the
    # CUDA branch is reached by a stand-in tensor whose device reports cuda (no GPU needed), and must equal torch's
    from headattr.generation import dream

    x = torch.rand(3, 50, dtype=torch.float32)
    moved = []

    class FakeCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda")

        def cpu(self):
            moved.append(1)
            return torch.Tensor(self.as_subclass(torch.Tensor))

    fake = x.as_subclass(FakeCuda)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self, raising=False)
    assert torch.equal(dream._cumsum(fake), torch.cumsum(x, dim=-1)) and moved == [1]
