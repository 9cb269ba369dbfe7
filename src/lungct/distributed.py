"""torch.distributed for lungct: who this process is, and the few collectives training and inference need.

lungct does not schedule anything itself: `torchrun` (or `lungct train --nproc N`, which calls the same
launcher) starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; this module reads
them, joins the process group (NCCL on GPUs, gloo on CPUs) and hands out a `Distributed` that the rest of
the code asks "am I rank 0?" and "gather this". Without those variables everything is a single process and
no collective is ever called, so the single-process path stays exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

from lungct.errors import LungCTError, one_line

IGNORE_INDEX = -100  # CrossEntropyLoss's ignore_index: the target of a padding sample (see ShardedBatches)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self):
        """This rank's device: its own GPU under NCCL, else the CPU."""
        import torch

        if self.backend == "nccl" or (not self.enabled and torch.cuda.is_available()):
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor):
        """Sum `tensor` over ranks, in place (on this rank's device, as NCCL requires), and return it."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_module(self, module) -> None:
        """Copy rank 0's parameters and buffers into `module` on every rank (after rank 0 alone loaded a file)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


_current = Distributed()


def current() -> Distributed:
    """The process group this process joined (`init_distributed`), or a single process."""
    return _current


def launched_distributed() -> bool:
    """True when a launcher (torchrun, torch.distributed.run) started this process as one of several."""
    return _env_int("WORLD_SIZE", 1) > 1


def restart_count() -> int:
    """How often torchrun restarted this worker group (elastic `--max-restarts`); 0 on the first attempt."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def init_distributed() -> Distributed:
    """Join the process group the launcher described, once; a single process when there is none."""
    global _current
    if _current.enabled or not launched_distributed():
        return _current
    import torch
    import torch.distributed as dist

    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:  # no rendezvous, a peer that never came
        raise LungCTError(f"cannot join the torch.distributed process group ({one_line(exc)})") from exc
    _current = Distributed(rank, world, local, backend)
    return _current


def shutdown() -> None:
    global _current
    if _current.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    _current = Distributed()


def shard_bounds(n: int, rank: int, world: int, block: int = 1) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items, cut on multiples of `block` (whole batches), so
    that concatenating the shards in rank order gives the items in order and each batch is the one a single
    process would form."""
    blocks = -(-n // block)
    start_block, stop_block = blocks * rank // world, blocks * (rank + 1) // world
    return min(n, start_block * block), min(n, stop_block * block)


def map_shards(items: list, predict: Callable[[list], list], block: int = 1) -> list:
    """`predict` over this rank's contiguous shard of `items` (cut on whole batches of `block`), the ranks'
    parts concatenated in rank order: the results a single process gets for `items`, on every rank."""
    dist = current()
    if not dist.enabled:
        return predict(items)
    start, stop = shard_bounds(len(items), dist.rank, dist.world_size, block)
    return [result for part in dist.gather(predict(items[start:stop])) for result in part]


class ShardedBatches:
    """This rank's part of each global batch that `batches` (a torch BatchSampler) yields.

    Every rank iterates the same global batches (same sampler, same seeded generator), takes its contiguous
    slice of each, and the gradients are combined over ranks: one step is exactly the step a single process
    takes on the whole global batch, whatever the number of ranks. A rank whose slice is empty (a last
    batch smaller than the number of ranks) gets one padding sample, encoded as a negative index, that
    `PaddedDataset` labels IGNORE_INDEX, so that every rank still takes part in the collective.
    """

    def __init__(self, batches: Any, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            start, stop = shard_bounds(len(batch), self.rank, self.world)
            yield list(batch[start:stop]) or [-(int(batch[0]) + 1)]


class PaddedDataset:
    """A dataset that also answers the negative indices of ShardedBatches' padding samples."""

    def __init__(self, dataset: Sized):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index < 0:
            x, _ = self.dataset[-index - 1]
            return x, IGNORE_INDEX
        return self.dataset[index]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise LungCTError(f"environment variable {name}={raw!r} is not an integer") from None
