"""Runs launched by `torchrun` (one node or several): each rank attributes its share of the samples.

    torchrun --nproc-per-node 8 -m headattr attribute MODEL --data D --out RUN            # one node
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 \\
             --nproc-per-node 8 -m headattr attribute MODEL --data D --out RUN            # several nodes

The launcher sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); with WORLD_SIZE > 1:

- `torch.distributed` is initialised (NCCL on CUDA, Gloo on CPU), and each rank uses `cuda:LOCAL_RANK`
  when CUDA is available and no `--device` is given;
- the samples are assigned by `assign`: longest first, each to the rank with the fewest tokens so far
  (ties: the lower rank), so that every rank gets about the same work and every rank computes the same
  assignment without talking to the others;
- each rank checkpoints its samples into its own `--out/checkpoints` (its node's disk: no shared filesystem
  is needed; on a shared one the ranks share the folder, each sample's file written by one rank), so an
  interrupted run continues with `--resume`, every rank reading back its own;
- the results are gathered to rank 0 (`gather_object`), which writes the run. Each sample's result depends
  only on the model, the sample and the settings, so the scores are byte-identical to a one-process run at
  the same thread count (torchrun sets OMP_NUM_THREADS=1 unless told otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import HeadattrError


@dataclass(frozen=True)
class World:
    """This process's place in a launched job."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: Mapping[str, str] | None = None) -> World | None:
    """The job torchrun (or Slurm via torchrun) launched this process in; None for a one-process run."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise HeadattrError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if size <= 1:
        return None
    if not 0 <= rank < size or local_rank < 0:
        raise HeadattrError(f"RANK {rank} / WORLD_SIZE {size} / LOCAL_RANK {local_rank} are inconsistent")
    return World(rank, size, local_rank)


def device_for(world: World, requested: str | None) -> str | None:
    """The device a rank uses: the one requested, else `cuda:LOCAL_RANK` when CUDA is there, else torch's."""
    if requested is not None or not torch.cuda.is_available():
        return requested
    return f"cuda:{world.local_rank % max(torch.cuda.device_count(), 1)}"


def init(world: World, device: str | None) -> None:
    """Join the process group: NCCL when this rank runs on CUDA, Gloo otherwise."""
    import torch.distributed as dist

    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise HeadattrError(f"{key} is not set; launch with torchrun, or set it (and RANK, WORLD_SIZE)")
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)


def finish() -> None:
    """Leave the process group (when one was joined)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def assign(tokens: list[int], size: int) -> list[list[int]]:
    """Sample indices per rank, balanced by token count: longest first, each to the least-loaded rank.

    Deterministic (ties: the lower index first, the lower rank first); each rank's list is in sample order.
    """
    load = [0] * size
    shares: list[list[int]] = [[] for _ in range(size)]
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        rank = min(range(size), key=lambda r: (load[r], r))
        shares[rank].append(i)
        load[rank] += tokens[i]
    return [sorted(s) for s in shares]


def gather_to_main(payload: Any, world: World) -> list[Any] | None:
    """Every rank's `payload` on rank 0 (in rank order); None on the other ranks."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(payload, out, dst=0)
    return out


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
