"""Block-sparse attention in generation (`headattr.generate(..., sparse=...)`) against a plain restatement.

The restatement below runs one prompt through the model's own whole forward pass (`reference.full_logits`, not
the layer stack `generate` uses) in plain sampler loops (Dream's maskgit_plus, LLaDA's low_confidence, at
temperature 0), with the schedule of `../shared/spec/sparse-attention.md` section 3 written out: dense steps;
at step end_time = int(steps * skip) + 1 every layer's post-RoPE q and k (captured by forward hooks on q_proj,
k_proj and the attention module's RoPE input) give its mask by `headattr.block_mask`; afterwards each layer's
attention gets that mask as a [1, H, T, T] boolean token mask. LLaDA's generation blocks rebuild their masks
(steps counted within the block) by default; with compat "origin" one counter runs over all steps and the
first mask serves every later block.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from headattr import SparseAttention, block_mask, keep_ratios
from headattr.cli import main
from headattr.engine.sparse_mask import BudgetRule
from headattr.errors import HeadattrError
from headattr.generation.completions import complete, text_prompts
from headattr.generation.sampling import generate
from headattr.generation.sparse import recording_usage, resolve_sparse, sparse_settings
from headattr.methods.reference import full_logits
from headattr.runs.budget import attention_budget, write_budget
from headattr.testing import make_run

PROMPT = [1, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
GUIDED = [1, 34, 8, 18, 26, 21, 27, 28, 27, 6, 38]  # LLaDA's two modes and guidance differ visibly here
OTHER = [1, 20, 21, 22, 23, 24]
DREAM = {"max_new_tokens": 8, "steps": 8, "alg": "maskgit_plus"}
LLADA = {"gen_length": 8, "steps": 8, "block_length": 4}
KEEP = np.random.default_rng(0).uniform(0.02, 0.3, size=(3, 4))  # the tiny models: 3 layers x 4 heads
BLOCK = 2  # the tiny prompts are short: small blocks make the masks matter


@pytest.fixture(autouse=True)
def _eager_flex_is_quiet():
    with warnings.catch_warnings():  # float64 on the CPU: flex runs eagerly, and says so once
        warnings.filterwarnings("ignore", message="compiled flex_attention failed")
        yield


def sparse(**changes) -> SparseAttention:
    return SparseAttention(**{"keep": KEEP, "skip": 0.2, "block_size": BLOCK, "kernel": "sdpa", **changes})


def generated(spec, prompt, settings, **kwargs) -> list[int]:
    return generate(spec, prompt, **settings, **kwargs)[0, len(prompt) :].tolist()


# ---------------------------------------------------------------- the restatement


def phase_of(step: int, steps: int, skip: float) -> str:
    end = int(steps * skip) + 1
    return "dense" if step < end else "build" if step == end else "sparse"


class Restatement:
    """One sequence through the model, its attention dense or restricted to masks it built itself."""

    def __init__(self, spec, keep: np.ndarray, block_size: int, generation_length: int) -> None:
        self.spec, self.keep, self.bs, self.gen = spec, keep, block_size, generation_length
        self.masks: dict[int, torch.Tensor] = {}  # layer -> bool [H, n, n]
        self.builds = 0

    def logits(self, x: list[int], phase: str) -> torch.Tensor:
        """[T, V] unshifted logits of `x` under `phase` (dense, build: dense and build the masks, sparse)."""
        seen: dict[int, dict[str, torch.Tensor]] = {}
        handles = []
        for layer, module in enumerate(self.spec.backbone.layers):
            attn = module.self_attn
            if phase == "build":
                seen[layer] = {}
                handles.append(attn.register_forward_pre_hook(partial(self._rope, seen[layer]), with_kwargs=True))
                handles.append(attn.q_proj.register_forward_hook(partial(self._out, seen[layer], "q")))
                handles.append(attn.k_proj.register_forward_hook(partial(self._out, seen[layer], "k")))
            elif phase == "sparse":
                handles.append(attn.register_forward_pre_hook(partial(self._restrict, layer), with_kwargs=True))
        try:
            logits = full_logits(self.spec, torch.tensor([x]))[0]
        finally:
            for h in handles:
                h.remove()
        if phase == "build":
            self.builds += 1
            for layer, got in seen.items():
                d = self.spec.model.config.hidden_size // self.spec.num_heads
                q = got["q"].view(1, len(x), -1, d).transpose(1, 2)
                k = got["k"].view(1, len(x), -1, d).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, *got["rope"])
                self.masks[layer] = block_mask(q[0], k[0], self.keep[layer], self.bs, self.gen)
        return logits

    @staticmethod
    def _rope(store, module, args, kwargs):
        store["rope"] = kwargs["position_embeddings"]

    @staticmethod
    def _out(store, name, module, args, output):
        store[name] = output

    def _restrict(self, layer, module, args, kwargs):
        t = kwargs["hidden_states"].shape[1]
        block = torch.arange(t) // self.bs
        allowed = self.masks[layer][:, block][:, :, block]  # [H, T, T]: token (r, c) iff its blocks are
        return args, {**kwargs, "attention_mask": allowed[None]}


def restated_dream(spec, prompt, keep, skip, bs, max_new_tokens, steps) -> tuple[list[int], int]:
    """Dream's maskgit_plus sampler at temperature 0, sparse; (generated ids, mask builds)."""
    model = Restatement(spec, keep, bs, max_new_tokens)
    mask = spec.mask_token_id
    x = list(prompt) + [mask] * max_new_tokens
    times = torch.linspace(1, 1e-3, steps + 1)
    for i in range(steps):
        logits = model.logits(x, phase_of(i, steps, skip))
        logits = torch.cat([logits[:1], logits[:-1]])  # the token at j is predicted at j - 1
        masked = [j for j in range(len(x)) if x[j] == mask]
        probs = {j: torch.softmax(logits[j], -1) for j in masked}
        n = torch.tensor(float(len(masked)))
        count = int(n * (1 - times[i + 1] / times[i])) if i < steps - 1 else len(masked)
        for j in sorted(masked, key=lambda j: -float(probs[j].max()))[:count]:
            x[j] = int(torch.argmax(probs[j]))
    return x[len(prompt) :], model.builds


def restated_llada(spec, prompt, keep, skip, bs, gen_length, steps, block_length, origin) -> tuple[list[int], int]:
    """LLaDA's low_confidence sampler at temperature 0, sparse; (generated ids, mask builds)."""
    model = Restatement(spec, keep, bs, gen_length)
    mask = spec.mask_token_id
    x = list(prompt) + [mask] * gen_length
    blocks = gen_length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        start, end = len(prompt) + b * block_length, len(prompt) + (b + 1) * block_length
        n_block = sum(1 for j in range(start, end) if x[j] == mask)
        schedule = [n_block // per_block + (1 if i < n_block % per_block else 0) for i in range(per_block)]
        if not origin:
            model.masks = {}  # each generation block builds its own masks
        for i in range(per_block):
            phase = phase_of(b * per_block + i, steps, skip) if origin else phase_of(i, per_block, skip)
            logits = model.logits(x, phase)
            conf, tokens = {}, {}
            for j in range(start, end):
                if x[j] == mask:
                    tokens[j] = int(torch.argmax(logits[j]))
                    conf[j] = float(torch.softmax(logits[j], -1)[tokens[j]])
            for j in sorted(conf, key=lambda j: -conf[j])[: schedule[i]]:
                x[j] = tokens[j]
    return x[len(prompt) :], model.builds


# ---------------------------------------------------------------- against the restatement


def test_dream_equals_the_restatement(dream):
    expected, builds = restated_dream(
        dream, PROMPT, KEEP, 0.2, BLOCK, **{k: DREAM[k] for k in ("max_new_tokens", "steps")}
    )
    with recording_usage() as usage:
        got = generated(dream, PROMPT, DREAM, sparse=sparse())
    assert got == expected and builds == 1 and len(usage) == 1 and 0 < usage[0] < 1
    assert got != generated(dream, PROMPT, DREAM)  # sparsity changes the tokens here


@pytest.mark.parametrize("compat", [None, "origin"])
def test_llada_equals_the_restatement_in_both_modes(llada, compat):
    args = (LLADA["gen_length"], LLADA["steps"], LLADA["block_length"])
    expected, builds = restated_llada(llada, GUIDED, KEEP, 0.2, BLOCK, *args, origin=compat == "origin")
    with recording_usage() as usage:
        got = generated(llada, GUIDED, LLADA, sparse=sparse(compat=compat))
    assert got == expected
    assert builds == len(usage) == (1 if compat == "origin" else 2)  # one mask per generation block by default
    assert got != generated(llada, GUIDED, LLADA)


def test_llada_modes_differ(llada):
    default = generated(llada, GUIDED, LLADA, sparse=sparse())
    assert default != generated(llada, GUIDED, LLADA, sparse=sparse(compat="origin"))


# ---------------------------------------------------------------- kernels, keep 1, padding, guidance


@pytest.mark.parametrize(
    "fixture,settings", [("dream", DREAM), ("llada", LLADA), ("llada", {**LLADA, "cfg_scale": 1.0})]
)
def test_flex_and_sdpa_give_the_same_tokens(request, fixture, settings):
    spec = request.getfixturevalue(fixture)
    sdpa = generate(spec, [PROMPT, OTHER], **settings, sparse=sparse())
    assert torch.equal(generate(spec, [PROMPT, OTHER], **settings, sparse=sparse(kernel="flex")), sdpa)


@pytest.mark.parametrize("fixture,settings", [("dream", DREAM), ("llada", LLADA)])
def test_keep_one_or_skip_one_is_dense(request, fixture, settings):
    spec = request.getfixturevalue(fixture)
    dense = generate(spec, [PROMPT, OTHER], **settings)
    assert torch.equal(generate(spec, [PROMPT, OTHER], **settings, sparse=sparse(keep=1.0)), dense)
    assert torch.equal(generate(spec, [PROMPT, OTHER], **settings, sparse=sparse(skip=1.0)), dense)
    assert torch.equal(generate(spec, [PROMPT, OTHER], **settings, sparse=sparse(keep=np.ones((3, 4)))), dense)


@pytest.mark.parametrize("fixture,settings", [("dream", DREAM), ("llada", LLADA)])
@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_a_padded_batch_equals_each_prompt_alone(request, fixture, settings, kernel):
    spec = request.getfixturevalue(fixture)
    both = generate(spec, [PROMPT, OTHER], **settings, sparse=sparse(kernel=kernel))
    width = len(PROMPT)
    assert both[0, width:].tolist() == generated(spec, PROMPT, settings, sparse=sparse(kernel=kernel))
    assert both[1, width:].tolist() == generated(spec, OTHER, settings, sparse=sparse(kernel=kernel))


def test_guidance_is_sparse(llada):
    guided = {**LLADA, "cfg_scale": 1.0}
    with recording_usage() as usage:
        sparse_tokens = generated(llada, GUIDED, guided, sparse=sparse(keep=0.05))
    assert len(usage) == 2 * 2 and max(usage) < 1  # 2 blocks x (conditional, unconditional) rows
    assert sparse_tokens != generated(llada, GUIDED, guided)


# ---------------------------------------------------------------- where keep ratios come from


def test_keep_from_a_run_and_a_budget_file(dream, tmp_path):
    scores = np.random.default_rng(1).normal(size=(3, 4))
    run = make_run(tmp_path / "run", scores, 0.1, n=4)
    from_run = resolve_sparse(dream, sparse(keep=str(run), select=0.2, gqa="kv"))
    expected = keep_ratios(make_run_scores(run), BudgetRule(select=0.2, min_keep=0.1), "kv", kv_heads=2)
    np.testing.assert_array_equal(np.asarray(from_run.keep, dtype=np.float32), expected)
    doc = attention_budget(run, rule=BudgetRule(select=0.25), gqa="kv", num_kv_heads=2)
    path = write_budget(doc, tmp_path / "budget.json")
    from_file = np.asarray(resolve_sparse(dream, sparse(keep=path)).keep)
    np.testing.assert_array_equal(from_file, np.repeat(np.asarray(doc["keep_ratios"]), 2, axis=1))
    with pytest.raises(HeadattrError, match="3 layers x 4 heads"):
        resolve_sparse(dream, sparse(keep=np.full((2, 4), 0.3)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keep_ratios": [[0.1]]}))
    with pytest.raises(HeadattrError, match="not a budget file"):
        resolve_sparse(dream, sparse(keep=bad))


def make_run_scores(run) -> np.ndarray:
    from headattr.runs.rundir import read_run

    return read_run(run).scores


def test_sparse_settings_refuse_bad_combinations():
    assert sparse_settings(None, {}) is None
    assert sparse_settings("uniform:0.3", {"sparse_block": "4", "sparse_compat": "none"}) == SparseAttention(
        keep=0.3, block_size=4
    )
    for source, given, words in [
        (None, {"sparse_skip": 0.3}, "needs --sparse"),
        ("uniform:2", {}, "uniform:R"),
        ("uniform:x", {}, "uniform:R"),
        ("missing.json", {}, "no such path"),
        ("uniform:0.3", {"sparse_select": 0.2}, "--sparse-select"),
        ("uniform:0.3", {"sparse_block": "x"}, "--sparse-block"),
        ("uniform:0.3", {"sparse_kernel": "cuda"}, "--sparse-kernel"),
    ]:
        with pytest.raises(HeadattrError, match=words):
            sparse_settings(source, given)


def test_a_sampler_without_sparse_support_refuses(dream, monkeypatch):
    import dataclasses

    from headattr.generation import sampler as registry

    monkeypatch.setitem(registry.SAMPLERS, "dream", dataclasses.replace(registry.SAMPLERS["dream"], sparse=False))
    with pytest.raises(HeadattrError, match="does not support sparse"):
        generate(dream, PROMPT, **DREAM, sparse=sparse())


# ---------------------------------------------------------------- the command line


def test_the_command_line(dream, dream_dir, tmp_path, capsys):
    flags = ["--max-new-tokens", "8", "--steps", "8", "--alg", "maskgit_plus", "--prompt", "k1=v1;k1?"]
    base = ["generate", str(dream_dir), *flags, "--sparse-block", str(BLOCK), "--sparse-kernel", "sdpa"]
    rows = text_prompts(dream, ["k1=v1;k1?"])
    expected = complete(dream, rows, sparse=sparse(keep=0.3), **DREAM)
    assert main([*base, "--sparse", "uniform:0.3"]) == 0
    assert capsys.readouterr().out == expected[0].completion + "\n"

    run = make_run(tmp_path / "run", np.random.default_rng(2).normal(size=(3, 4)), 0.1, n=4)
    from_run = complete(dream, rows, sparse=sparse(keep=str(run), select=0.2), **DREAM)
    assert main([*base, "--sparse", str(run), "--sparse-select", "0.2"]) == 0
    assert capsys.readouterr().out == from_run[0].completion + "\n"

    budget = tmp_path / "budget.json"
    assert main(["budget", str(run), "--out", str(budget), "--gqa", "kv", "--kv-heads", "2"]) == 0
    capsys.readouterr()
    from_file = complete(dream, rows, sparse=sparse(keep=budget), **DREAM)
    assert main([*base, "--sparse", str(budget)]) == 0
    assert capsys.readouterr().out == from_file[0].completion + "\n"

    for bad in (["--sparse", "uniform:1.5"], ["--sparse", str(tmp_path / "none")], ["--sparse-skip", "0.5"]):
        assert main(["generate", str(dream_dir), *flags, *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


def test_prune_and_lm_eval_pass_sparse_on(dream, dream_dir, tmp_path, monkeypatch, capsys):
    from headattr.generation import lmeval, taskeval
    from headattr.generation.taskeval import GenerationEval, generation_correct

    seen = []

    def spy(*args, sparse=None, **kwargs):
        seen.append(sparse)
        return generate(*args, sparse=sparse, **kwargs)

    monkeypatch.setattr(taskeval, "generate", spy)
    samples = [SimpleNamespace(input_ids=[*PROMPT, 20, 21], answer_start=len(PROMPT), answer_end=len(PROMPT) + 2)]
    evaluation = GenerationEval.from_text("exact", DREAM, sparse=sparse(keep=0.2))
    generation_correct(dream, samples, np.ones((1, 3, 4)), evaluation)
    assert seen == [sparse(keep=0.2)] and evaluation.describe(dream)["sparse"]["sparse_keep"] == 0.2

    model = lmeval.HeadattrLM(pretrained=str(dream_dir), sparse="uniform:0.2", sparse_block=2, sparse_kernel="sdpa")
    assert model.sparse == SparseAttention(keep=0.2, block_size=2, kernel="sdpa") and "sparse" not in model.settings
    with pytest.raises(HeadattrError, match="needs --sparse"):
        lmeval.HeadattrLM(pretrained=str(dream_dir), sparse_skip=0.5)

    run = make_run(tmp_path / "run", np.zeros((3, 4)), 0.1, n=4)
    args = ["prune", str(dream_dir), "--scores", str(run), "--out", str(tmp_path / "p"), "--sparse", "uniform:0.3"]
    assert main(args) == 2
    assert "needs --eval generate" in capsys.readouterr().err
