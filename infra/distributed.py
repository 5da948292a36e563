"""Data parallelism with `torchrun` and DistributedDataParallel, for the loops that train a model
on replay batches (DreamerV2, PlaNet). Without torchrun nothing here starts: the one-process path
needs neither a process group nor DDP.

    torchrun --nproc-per-node 4 scripts/train_dreamer.py --env dmc:walker-walk --logdir runs/w

torchrun starts one process per rank and tells each, in its environment, RANK, LOCAL_RANK
(the rank on its node) and WORLD_SIZE. Each rank gets a device (`cuda:LOCAL_RANK` when the run
asks for CUDA, or for auto on a machine with GPUs; else the CPU) and the process group's backend
for it (NCCL on GPUs, gloo on CPUs). A module whose `forward` computes a loss is wrapped in DDP
(`wrap`), which averages the gradients of the backward that follows that forward over the ranks
while it runs; small control values (a stop flag, the loops' positions, the ranks' own state for
a checkpoint) travel over a gloo group, on the host, so they never wait for a GPU. On several
nodes the run directory must be on a filesystem all of them see: every rank reads the one
checkpoint when it resumes.

    world = launched(parallel=True)        # rank, local rank, size; World() without torchrun
    device = start(world, "auto")          # the rank's device; the process group when size > 1
    loss = wrap(LossModule(model), device) # DDP under torchrun, the module itself otherwise
    ...
    finish()                               # the process group's end (a no-op without one)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from wmrl.infra.runtime import resolve_device

_control = None  # the gloo group of the control values (the default group when it is gloo)


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks torchrun started: `rank` (0..size-1), `local_rank`
    (its index on its node, which picks its GPU), `size` (WORLD_SIZE). World() is one process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def parallel(self) -> bool:
        """More than one rank: DDP, per-rank seeds, envs and replays."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0, which writes the logs, GIFs, progress bar and checkpoints."""
        return self.rank == 0


def launched(parallel: bool, environ=None) -> World:
    """The World torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) describes; World() without
    those variables or with WORLD_SIZE=1. A job that does not train data-parallel (`parallel`
    false) launched on several ranks is refused (ValueError): its ranks would write one run
    directory each at once."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", env.get("RANK", "0")))
    except ValueError as exc:
        message = f"torchrun's RANK, LOCAL_RANK and WORLD_SIZE must be integers: {exc}"
        raise ValueError(message) from exc
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(
            f"RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={size} is not a valid rank; launch "
            "with torchrun --nproc-per-node N, which sets them"
        )
    if size > 1 and not parallel:
        raise ValueError(
            f"this job does not train data-parallel, but WORLD_SIZE={size}: run it without "
            "torchrun (data parallelism: scripts/train_dreamer.py, scripts/train_planet.py)"
        )
    return World(rank, local, size)


def rank_device(name: str, world: World) -> torch.device:
    """The device of this rank for `--device name`: with several ranks, `cuda` (or `auto` on a
    machine with GPUs) means `cuda:LOCAL_RANK`, one GPU per rank; `cpu` is the CPU. ValueError
    (one line) for a device several ranks cannot share: a named GPU, or more ranks on this node
    than it has GPUs."""
    device = resolve_device(name)  # checks the name, and that CUDA exists when asked for
    if not world.parallel or device.type == "cpu":
        return device
    if device.index is not None:
        raise ValueError(
            f"--device {name} names one GPU, but under torchrun each rank takes its own "
            "(cuda:LOCAL_RANK): pass --device cuda"
        )
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ValueError(
            f"rank {world.rank} is local rank {world.local_rank}, but this node has {count} "
            f"GPU(s): start at most {count} ranks per node (torchrun --nproc-per-node {count}), "
            "or train on the CPU with --device cpu"
        )
    return torch.device("cuda", world.local_rank)


def start(world: World, device: str = "auto") -> torch.device:
    """The rank's device (`rank_device`); with several ranks, also the process group: NCCL on
    a GPU, gloo on the CPU, joined through torchrun's rendezvous (MASTER_ADDR, MASTER_PORT), and
    a gloo group for the control values. One process: `resolve_device(device)`, nothing else."""
    global _control
    place = rank_device(device, world)
    if not world.parallel:
        return place
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed: install an official build")
    backend = "nccl" if place.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("this PyTorch has no NCCL for GPUs: install a CUDA build, or --device cpu")
    if not dist.is_initialized():
        if place.type == "cuda":
            torch.cuda.set_device(place)
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    _control = dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD
    return place


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` (whose forward computes a loss) in DistributedDataParallel on `device`, or the
    module itself without a process group. DDP broadcasts rank 0's parameters and buffers when
    it is built, so every rank starts from rank 0's weights; an optimiser built on the module's
    parameters keeps working on them (they are the same tensors)."""
    if not (dist.is_available() and dist.is_initialized()):
        return module
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_gather_ints(values: list[int]) -> list[list[int]]:
    """Every rank's `values` (one short list of ints each, the same length on every rank), in
    rank order, over the gloo group; one process gets its own back."""
    if _control is None:
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.long)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(_control))]
    dist.all_gather(out, mine, group=_control)
    return [t.tolist() for t in out]


def gather(obj, world: World) -> list | None:
    """Every rank's `obj` (picklable: tensors on the CPU, numbers, dicts), in rank order, at rank
    0; None on the others. One process: [obj]."""
    if _control is None:
        return [obj]
    out = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0, group=_control)
    return out


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if _control is not None:
        dist.barrier(group=_control)


def finish() -> None:
    """End the process group, if `start` began one."""
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None
