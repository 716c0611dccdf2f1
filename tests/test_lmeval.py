"""The lm-eval model `headattr`, run offline by lm-eval's `simple_evaluate` on custom tasks over local JSONL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import headattr.generation.lmeval as lmeval  # noqa: E402  (registers the model)
from headattr.demo import DATA_FILE, MODEL_DIR  # noqa: E402
from headattr.generation.sampling import completion_text, generate  # noqa: E402
from headattr.methods.reference import full_logits
from headattr.models import load_model  # noqa: E402

REMOVED = [[0, 0], [0, 3], [1, 2], [2, 5]]
GEN_ARGS = "steps=8,alg=maskgit_plus"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generation task and a multiple-choice task over local files (no hub)."""
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines() if '"copy"' in line][:4]
    (root / "copy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    choice_rows = [{"prompt": r["prompt"], "choices": [r["answer"], r["answer"][::-1]], "label": 0} for r in rows[:2]]
    (root / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice_rows))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {file}\ntest_split: test\n"
    (root / "gen.yaml").write_text(
        "task: headattr_copy\n"
        + common.format(file=root / "copy.jsonl")
        + 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        + 'generation_kwargs:\n  until: ["z"]\n  max_gen_toks: 10\nmetric_list:\n  - metric: exact_match\n'
    )
    (root / "choice.yaml").write_text(
        "task: headattr_choice\n"
        + common.format(file=root / "choice.jsonl")
        + 'output_type: multiple_choice\ndoc_to_text: "{{prompt}}"\ndoc_to_choice: "{{choices}}"\n'
        + "doc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    return root


@pytest.fixture(scope="module")
def head_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = load_model(MODEL_DIR, device="cpu")
    path = tmp_path_factory.mktemp("mask") / "head_mask.json"
    path.write_text(
        json.dumps(
            {
                "format": "headattr-head-mask",
                "num_layers": 6,
                "num_heads": 8,
                "model": {"config_hash": spec.config_hash},
                "orders": {"most": {"0.1": REMOVED}},
            }
        )
    )
    return path


def _evaluate(tasks: Path, names: list[str], model_args: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(1)
    return simple_evaluate(
        model="headattr",
        model_args=model_args,
        tasks=names,
        batch_size=3,
        task_manager=TaskManager(include_path=str(tasks)),
        random_seed=0,
    )


def _expected(spec, prompt: str, removed) -> str:
    ids = [spec.tokenizer.bos_token_id, *spec.tokenizer.encode(prompt, add_special_tokens=False)]
    out = generate(spec, ids, head_mask=removed, steps=8, alg="maskgit_plus", max_new_tokens=10, seed=1234)
    return completion_text(spec, out[0, len(ids) :]).split("z")[0]


def test_generate_until_with_and_without_head_mask(tasks, head_mask):
    spec = load_model(MODEL_DIR, device="cpu")
    plain = _evaluate(tasks, ["headattr_copy"], f"pretrained={MODEL_DIR},{GEN_ARGS}")
    mask_args = f"head_mask={head_mask},fraction=0.1"
    masked = _evaluate(tasks, ["headattr_copy"], f"pretrained={MODEL_DIR},{GEN_ARGS},{mask_args}")
    answers = {}
    for name, result, removed in (("plain", plain, None), ("masked", masked, [tuple(h) for h in REMOVED])):
        samples = result["samples"]["headattr_copy"]
        answers[name] = [s["resps"][0][0] for s in samples]
        for s in samples:  # max_gen_toks is the length; the text is cut at EOS, then before "z"
            assert s["resps"][0][0] == _expected(spec, s["doc"]["prompt"], removed)
        assert 0.0 <= result["results"]["headattr_copy"]["exact_match,none"] <= 1.0
    assert answers["plain"] != answers["masked"]


def test_loglikelihood_multiple_choice(tasks):
    result = _evaluate(tasks, ["headattr_choice"], f"pretrained={MODEL_DIR},mc_num=8,mc_batch_size=4")
    samples = result["samples"]["headattr_choice"]
    lls = [r[0][0] for s in samples for r in s["resps"]]
    assert len(lls) == 4 and all(math.isfinite(x) and x < 0 for x in lls)
    again = _evaluate(tasks, ["headattr_choice"], f"pretrained={MODEL_DIR},mc_num=8,mc_batch_size=4")
    assert lls == [r[0][0] for s in again["samples"]["headattr_choice"] for r in s["resps"]]  # seeded


def test_llada_estimate_of_one_token_is_its_exact_log_probability(llada):
    """LLaDA's estimator masks exactly 1..L tokens; with L = 1 every copy masks it with weight 1: exact."""
    prompt, token = [1, 8, 9, 10], 12
    estimate = lmeval.mc_loglikelihood(llada, prompt, [token], mc_num=4, batch=2, seed=0)
    ids = torch.tensor([[*prompt, llada.mask_token_id]])
    exact = torch.log_softmax(full_logits(llada, ids)[0, -1], dim=-1)[token]
    assert estimate == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_target_loss_is_the_weighted_cross_entropy_of_the_whole_models_logits(family, request):
    """The estimators' loss (LM head only from the first masked column on; Dream's shift) against the model's
    own full forward pass: position j read at j - 1 for Dream, at j for LLaDA."""
    spec = request.getfixturevalue(family)
    seq = torch.tensor([[1, 8, 9, 10, 12, 13, 14], [1, 8, 9, 10, 15, 16, 17]])
    noisy = seq.clone()
    noisy[0, [4, 6]] = spec.mask_token_id
    noisy[1, [5]] = spec.mask_token_id
    weight = torch.full(seq.shape, 0.5, dtype=torch.float64)
    got = lmeval._target_loss(spec, seq, noisy, weight, {})
    logits = full_logits(spec, noisy).double()
    if spec.logit_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    masked = noisy == spec.mask_token_id
    nll = torch.nn.functional.cross_entropy(logits[masked], seq[masked], reduction="none")
    assert float(got) == pytest.approx(float((nll / 0.5).sum()), rel=1e-9)


def test_dream_estimate_is_seeded_and_gated(dream):
    prompt, target = [1, 8, 9], [12, 13, 14, 2]
    a = lmeval.mc_loglikelihood(dream, prompt, target, mc_num=8, batch=4, seed=3)
    assert a == lmeval.mc_loglikelihood(dream, prompt, target, mc_num=8, batch=4, seed=3)
    assert a != lmeval.mc_loglikelihood(dream, prompt, target, mc_num=8, batch=4, seed=4)
    gates = {0: torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)}
    assert a != lmeval.mc_loglikelihood(dream, prompt, target, mc_num=8, batch=4, seed=3, gates=gates)


def test_rolling_and_wrong_settings_are_clear_errors():
    from headattr.errors import HeadattrError

    model = lmeval.HeadattrLM(pretrained=str(MODEL_DIR), steps=4)
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        model.loglikelihood_rolling([])
    with pytest.raises(HeadattrError, match="LLaDA setting"):
        lmeval.HeadattrLM(pretrained=str(MODEL_DIR), block_length=4)


def test_batch_size_accepts_lm_evals_auto_forms():
    assert [lmeval.generation_batch_size(v) for v in (None, 3, "5", "auto", "auto:4", "auto:2.5")] == [
        1,
        3,
        5,
        16,
        16,
        16,
    ]
    assert lmeval.generation_batch_size("auto:4", max_batch_size=6) == 6
    from headattr.errors import HeadattrError

    for bad in ("0", "many", "auto:x"):
        with pytest.raises(HeadattrError, match="batch_size"):
            lmeval.generation_batch_size(bad)
    assert lmeval.HeadattrLM(pretrained=str(MODEL_DIR), batch_size="auto:4", steps=4).batch_size == 16


def test_ranks_of_a_launch_are_told_to_the_harness(monkeypatch):
    """Under torchrun / accelerate launch (2 GPUs emulated): rank 1 joins the group and loads on cuda:1."""
    import torch.distributed as dist

    loaded, joined = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", lambda index: None, raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: joined.append(kw))
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "x"}
    for key, value in {**env, "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    cpu_load = lambda path, **kw: loaded.append(kw["device"]) or load_model(path, device="cpu")  # noqa: E731
    monkeypatch.setattr(lmeval, "load_model", cpu_load)
    model = lmeval.HeadattrLM(pretrained=str(MODEL_DIR), device="cuda", steps=4)
    assert (model.rank, model.world_size) == (1, 2) and loaded == ["cuda:1"]
    assert [(j["backend"], j["rank"], j["world_size"]) for j in joined] == [("gloo", 1, 2)]


# one rank of a 2-process launch: simple_evaluate on the copy task; prints the prompts this rank generated for
# and (rank 0) the logged samples
RANK_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
import headattr.generation.lmeval as lmeval
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
generated = []
real = lmeval.HeadattrLM._generate
def counted(self, requests, chunk, settings):
    generated.extend(requests[i].args[0] for i in chunk)
    return real(self, requests, chunk, settings)
lmeval.HeadattrLM._generate = counted
result = simple_evaluate(model="headattr", model_args=sys.argv[1], tasks=["headattr_copy"], batch_size=3,
                         task_manager=TaskManager(include_path=sys.argv[2]), random_seed=0)
logged = [] if result is None else result["samples"]["headattr_copy"]
samples = None if result is None else [[s["doc"]["prompt"], s["resps"][0][0]] for s in logged]
lmeval.distributed.finish()
print(json.dumps({"generated": generated, "samples": samples}))
"""


def test_two_ranks_share_the_requests_and_rank_0_reports_all(tasks):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = load_model(MODEL_DIR, device="cpu")
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        argv = [sys.executable, "-c", RANK_SCRIPT, f"pretrained={MODEL_DIR},{GEN_ARGS}", str(tasks)]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    rank0, rank1 = outs
    assert rank1["samples"] is None and len(rank0["samples"]) == 4  # the evaluator on rank 0 sees every document
    assert len(rank0["generated"]) == len(rank1["generated"]) == 2  # each rank generated its half, not all 4
    assert sorted(rank0["generated"] + rank1["generated"]) == sorted(prompt for prompt, _ in rank0["samples"])
    for prompt, response in rank0["samples"]:  # as one process generates them
        assert response == _expected(spec, prompt, None)
