"""Runs launched by `torchrun` (one node or several): each rank attributes its share of the samples.

    torchrun --nproc-per-node 8 -m headattr attribute MODEL --data D --out RUN            # one node
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 \\
             --nproc-per-node 8 -m headattr attribute MODEL --data D --out RUN            # several nodes

The launcher sets WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1:

- `torch.distributed` is initialised with Gloo, also on GPUs: the ranks exchange only Python objects
  (the assignment's error, the results), never CUDA tensors, so NCCL brings nothing, and its watchdog would
  tear a rank down after its 10-minute default while it waits in `gather_object` for the slowest rank. The
  group's timeout is `HEADATTR_DIST_TIMEOUT` (seconds, or e.g. `90m`, `12h`; default 24 h): the longest a
  rank waits for the others. A rank that crashes does not make the others wait: torchrun ends them all;
- each rank uses `cuda:LOCAL_RANK % device_count` when CUDA is available and `--device` is absent or an
  index-less `cuda`; an indexed `--device cuda:N` with several ranks on a node is an error (every rank
  would run on the one GPU);
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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from headattr.errors import HeadattrError
from headattr.models.devices import check_device

TIMEOUT_ENV = "HEADATTR_DIST_TIMEOUT"
DEFAULT_TIMEOUT = timedelta(hours=24)  # the longest a rank waits for the slowest one (a run's imbalance)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class World:
    """This process's place in a launched job."""

    rank: int
    size: int
    local_rank: int
    local_size: int = 1  # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

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
        local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))  # absent: assume one node, as LOCAL_RANK does
    except ValueError:
        raise HeadattrError(
            "WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (as torchrun sets them)"
        ) from None
    if size <= 1:
        return None
    if not 0 <= rank < size or not 1 <= local_size <= size or not 0 <= local_rank < local_size:
        raise HeadattrError(
            f"RANK {rank} / WORLD_SIZE {size} / LOCAL_RANK {local_rank} / LOCAL_WORLD_SIZE {local_size} "
            "are inconsistent"
        )
    return World(rank, size, local_rank, local_size)


def device_for(world: World, requested: str | None) -> str | None:
    """The device a rank uses (None: torch's default, the CPU here).

    No `--device`, or `cuda` without an index: `cuda:LOCAL_RANK % device_count` when CUDA is available (more
    ranks than GPUs share them round-robin). `cuda:N` is kept with one rank per node and refused with several:
    every rank of the node would run on GPU N. Other devices are kept. A device this machine lacks is a
    one-line error here, before `init` touches CUDA.
    """
    check_device(requested)
    if requested is None and not torch.cuda.is_available():
        return None
    device = torch.device(requested or "cuda")
    if device.type != "cuda":
        return requested
    if device.index is None:
        return f"cuda:{world.local_rank % max(torch.cuda.device_count(), 1)}"
    if world.local_size > 1:
        raise HeadattrError(
            f"--device {requested} would put all {world.local_size} ranks of this node on one GPU; "
            "pass --device cuda (or none): each rank then uses cuda:LOCAL_RANK"
        )
    return requested


def timeout_from_env(env: Mapping[str, str] | None = None) -> timedelta:
    """The process group's timeout: `HEADATTR_DIST_TIMEOUT` (seconds, or a number with s, m, h or d), else 24 h.

    It bounds how long a rank waits in a collective for the others, and a rank that finishes its share early
    waits for the slowest (the whole run's imbalance, hours on a long run).
    """
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise HeadattrError(f"{TIMEOUT_ENV} must be a positive duration, e.g. 3600, 90m, 12h or 2d; got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def init(world: World, device: str | None) -> None:
    """Join the process group: Gloo (Python objects only, see the module docstring), `timeout_from_env`."""
    import torch.distributed as dist

    timeout = timeout_from_env()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))  # the current device is this rank's GPU (memory queries)
    if not dist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise HeadattrError(f"{key} is not set; launch with torchrun, or set it (and RANK, WORLD_SIZE)")
        dist.init_process_group(backend="gloo", rank=world.rank, world_size=world.size, timeout=timeout)


def finish(wait: bool = True) -> None:
    """Leave the process group (when one was joined). With `wait` (a rank that finished its work), after every
    rank has got here: a rank that tore its Gloo group down while a peer was still sending to it aborted that
    peer ("terminate called without an active exception", seen once in the lm-eval two-rank test). A rank
    leaving on an error does not wait (its peers may be blocked in another collective); torchrun ends them."""
    import torch.distributed as dist

    if dist.is_initialized():
        if wait:
            dist.barrier()
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


def gather_to_main(payload: Any, world: World, dst: int = 0) -> list[Any] | None:
    """Every rank's `payload` on rank `dst` (0: the main rank), in rank order; None on the other ranks."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.rank == dst else None
    dist.gather_object(payload, out, dst=dst)
    return out


def all_gather_tensor(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 on every rank (a 0-d tensor counts as [1]), in rank order.

    The shapes must agree across ranks. The exchange goes through the CPU (the group is Gloo); the result is
    on `tensor`'s device.
    """
    import torch.distributed as dist

    local = tensor.detach().cpu()
    local = local[None] if local.dim() == 0 else local.contiguous()
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
