"""torchrun (issue 10, item 5): ranks share the samples by tokens, rank 0 gathers and writes the run.

Two processes with Gloo on CPU, launched as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), each with its own --out directory as on two nodes without a shared filesystem; the scores must
be byte-identical to a one-process run with the same thread count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from headattr.errors import HeadattrError
from headattr.runs import distributed
from headattr.runs.distributed import World, assign, device_for, world_from_env

FAST = ["--ig-steps", "2", "--mask-probs", "0.5,1.0", "--mask-samples-per-prob", "1", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [{"prompt": f"k{i}=v{i % 7};" * (1 + i % 3) + f"k{i}?", "answer": f"v{i % 7}x"} for i in range(16)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `headattr ...` that SIGKILLs itself right after its first checkpoint: a hard kill at a known point (the tiny
# model computes a group of samples faster than a watcher could react)
KILLED_AFTER_FIRST = """
import os, signal
from headattr.runs import checkpoints
from headattr.cli import app as cli
real = checkpoints.save_checkpoint
def save(*args):
    real(*args)
    os.kill(os.getpid(), signal.SIGKILL)
checkpoints.save_checkpoint = save
cli.main()
"""


def command(model: Path, data: Path, out: Path, samples: int, *extra: str, killed: bool = False) -> list[str]:
    return [
        *([sys.executable, "-c", KILLED_AFTER_FIRST] if killed else [sys.executable, "-m", "headattr"]),
        "attribute",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--samples",
        str(samples),
        *FAST,
        *extra,
    ]


def launch(
    model: Path, data: Path, outs: list[Path], samples: int, *extra: str, killed: bool = False
) -> list[subprocess.Popen]:
    """One process per rank, as torchrun starts them (its environment variables, no launcher); `killed`: each
    rank SIGKILLs itself after its first checkpoint."""
    port, procs = free_port(), []
    for rank, out in enumerate(outs):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(len(outs)),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": "",
        }
        procs.append(
            subprocess.Popen(
                command(model, data, out, samples, *extra, killed=killed),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def wait(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout + stderr))
    return out


def single(model: Path, data: Path, out: Path, samples: int) -> bytes:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(command(model, data, out, samples), env=env, check=True, capture_output=True, timeout=300)
    return (out / "scores.safetensors").read_bytes()


def test_assign_balances_tokens_deterministically():
    tokens = [50, 10, 40, 30, 20, 60, 5]
    shares = assign(tokens, 3)
    assert shares == assign(tokens, 3)
    assert sorted(i for s in shares for i in s) == list(range(7)) and all(s == sorted(s) for s in shares)
    loads = [sum(tokens[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(tokens)  # greedy longest-first: within one sample of balanced
    assert shares == [[1, 5, 6], [0, 4], [2, 3]]  # 60+10+5, 50+20, 40+30
    assert assign([7], 2) == [[0], []]


def test_merged_groups_are_shared_out_whole_and_do_not_depend_on_the_share():
    from headattr.data.tokens import Sample
    from headattr.runs.attribution import _my_groups

    # lengths 5, 7, 5, 5, 7, 9, 5 (answer spans follow the length): groups of up to 2 of one shape
    samples = [
        Sample(i, f"{i:016x}", None, tuple(range(n)), n - 2, n, 0, 0) for i, n in enumerate([5, 7, 5, 5, 7, 9, 5])
    ]
    whole = _my_groups(samples, None, None, 2)
    assert whole == [[0, 2], [1, 4], [3, 6], [5]]
    for count in (2, 3):
        shards = [_my_groups(samples, (i, count), None, 2) for i in range(count)]
        ranks = [_my_groups(samples, None, World(rank=i, size=count, local_rank=i), 2) for i in range(count)]
        assert shards == ranks  # --shard and torchrun share out alike
        assert sorted(g for share in shards for g in share) == sorted(whole)  # the same groups, each whole


def test_world_from_env():
    assert world_from_env({}) is None and world_from_env({"WORLD_SIZE": "1"}) is None
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == World(
        3, 4, 1, 2
    )
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3"}).local_size == 4  # no LOCAL_WORLD_SIZE: one node
    for bad in (
        {"WORLD_SIZE": "two"},
        {"WORLD_SIZE": "2", "RANK": "2"},
        {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
    ):
        with pytest.raises(HeadattrError):
            world_from_env(bad)


# ---------------------------------------------------------------- GPU nodes, emulated on CPU (issue 24)


@pytest.fixture
def four_gpus(monkeypatch) -> list[int]:
    """A node with 4 CUDA devices as torch.cuda reports it. `torch.cuda.set_device` keeps its own argument
    check (an index-less `cuda` raises ValueError, as on a GPU node); the indices it sets are returned."""
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", current.append, raising=False)
    return current


@pytest.fixture
def joined(monkeypatch) -> list[dict]:
    """`init_process_group`'s keyword arguments, recorded instead of joining a group."""
    import torch.distributed as dist

    calls: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kw: calls.append({"args": args, **kw}))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("HEADATTR_DIST_TIMEOUT", raising=False)
    return calls


def test_gpu_ranks_join_a_gloo_group_that_outwaits_nccls_ten_minutes(four_gpus, joined, monkeypatch):
    world = World(rank=5, size=8, local_rank=5, local_size=8)
    distributed.init(world, device_for(world, "cuda"))
    (call,) = joined
    assert call["backend"] == "gloo"  # Python objects only: no NCCL watchdog
    assert (call["rank"], call["world_size"]) == (5, 8)
    assert call["timeout"] >= timedelta(hours=12)  # a rank waits for the slowest in gather_object
    assert four_gpus == [1]  # cuda:LOCAL_RANK % 4
    for text, expected in (("7200", timedelta(hours=2)), ("90m", timedelta(minutes=90)), ("2d", timedelta(days=2))):
        monkeypatch.setenv("HEADATTR_DIST_TIMEOUT", text)
        distributed.init(world, "cuda:1")
        assert joined[-1]["timeout"] == expected
    for bad in ("soon", "0", "-5m"):
        monkeypatch.setenv("HEADATTR_DIST_TIMEOUT", bad)
        with pytest.raises(HeadattrError, match="HEADATTR_DIST_TIMEOUT"):
            distributed.init(world, "cuda:1")
    assert len(joined) == 4  # a bad timeout is refused before joining


def test_torchrun_device_is_cuda_local_rank(four_gpus):
    world = World(rank=5, size=8, local_rank=5, local_size=8)
    assert device_for(world, "cuda") == "cuda:1" and device_for(world, None) == "cuda:1"
    assert device_for(World(rank=2, size=4, local_rank=2, local_size=4), "cuda") == "cuda:2"
    assert device_for(world, "cpu") == "cpu"
    with pytest.raises(HeadattrError, match="cuda:0 would put all 8 ranks of this node on one GPU"):
        device_for(world, "cuda:0")
    assert device_for(World(rank=1, size=2, local_rank=0, local_size=1), "cuda:3") == "cuda:3"  # one rank a node
    with pytest.raises(HeadattrError, match="4 CUDA device"):
        device_for(World(rank=1, size=2, local_rank=0, local_size=1), "cuda:7")


def test_torchrun_device_cuda_without_cuda_is_one_line(dream_dir, data_file, tmp_path, monkeypatch, capsys):
    from headattr.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    argv = ["attribute", str(dream_dir), "--data", str(data_file), "--out", str(tmp_path / "r"), "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and len(err.strip().splitlines()) == 1


def test_two_gloo_ranks_write_the_one_process_scores(dream_dir, data_file, tmp_path):
    expected = single(dream_dir, data_file, tmp_path / "single", 7)
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]  # no shared filesystem
    results = wait(launch(dream_dir, data_file, outs, 7))
    assert [code for code, _ in results] == [0, 0], results
    assert (outs[0] / "scores.safetensors").read_bytes() == expected
    meta = json.loads((outs[0] / "run.json").read_text())
    assert meta["timings"]["ranks"] == 2 and meta["timings"]["computed_samples"] == 7
    alone = json.loads((tmp_path / "single" / "run.json").read_text())["timings"]
    for kind in ("forward", "backward"):  # every rank's model work, not rank 0's share alone
        assert meta["timings"][f"{kind}_passes_per_sample"] == alone[f"{kind}_passes_per_sample"]
    assert not outs[1].exists() and not (outs[0] / "checkpoints").exists()  # rank 1 left nothing behind
    assert "wrote" in results[0][1] and "wrote" not in results[1][1]


def test_interrupted_ranks_resume_from_their_own_checkpoints(dream_dir, data_file, tmp_path):
    expected = single(dream_dir, data_file, tmp_path / "single", 16)
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    assert [code for code, _ in wait(launch(dream_dir, data_file, outs, 16, killed=True))] == [-signal.SIGKILL] * 2
    kept = [len(list((o / "checkpoints").glob("*.safetensors"))) for o in outs]
    assert kept == [1, 1]  # both ranks killed part-way
    results = wait(launch(dream_dir, data_file, outs, 16, "--resume"))
    assert [code for code, _ in results] == [0, 0], results
    assert (outs[0] / "scores.safetensors").read_bytes() == expected
    meta = json.loads((outs[0] / "run.json").read_text())
    assert meta["timings"]["resumed_samples"] == sum(kept)  # each rank read back its own checkpoints


def test_shard_under_torchrun_is_one_line(dream_dir, data_file, tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    p = subprocess.run(
        command(dream_dir, data_file, tmp_path / "r", 2, "--shard", "0/2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "--shard" in p.stderr and "Traceback" not in p.stderr


def test_finish_waits_for_the_other_ranks_only_when_leaving_normally(monkeypatch):
    # leaving after its work, a rank waits so that no peer is still sending to it; leaving on an error it must
    # not: its peers may be blocked in another collective, and a barrier would hang until the group's timeout
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.finish()
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.finish(wait=False)
    assert calls == ["destroy"]
