"""Running under a launcher (``torchrun``, ``accelerate launch``, ``deepspeed``): who does what.

Training is the Trainer's own DDP/FSDP/DeepSpeed; what is ours is everything around it:

- the stages that talk to the teacher (policy, harvest, dataset) run on rank 0 only: every
  rank harvesting would send — and pay for — each request once per process;
- the other ranks wait for rank 0 on a gloo group of their own with a long timeout (a
  harvest can take hours; the training group keeps its normal ``ddp_timeout``);
- metrics the trainer sums itself (CE, KD, agreement, tokens/s) are summed over all ranks
  before they are logged, so a log line describes the global batch, not rank 0's share.

The launcher says where a process stands in ``RANK`` and ``WORLD_SIZE``; without them this
is one process and every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

__all__ = ["StageGate", "launcher_rank", "reduce_sums"]

# How long the other ranks wait for rank 0's harvest and dataset before giving up.
STAGE_WAIT = timedelta(days=2)


def launcher_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) for a plain process."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


class StageGate:
    """Rank 0 runs the teacher-facing stages; :meth:`release` lets the others go on.

    ``gate = StageGate.join()`` on every rank (it joins the launcher's process group, as
    the Trainer would later), ``if gate.is_main: harvest...``, then ``gate.release(...)``
    on every rank: the others block there until rank 0 arrives and learn whether to go on.
    """

    def __init__(self, rank: int, world_size: int, group: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self._group = group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls) -> StageGate:
        _, world = launcher_rank()
        if world <= 1:
            return cls(0, 1)
        import torch.distributed as dist
        from accelerate import PartialState

        from apidistill.train.session import no_accelerator

        PartialState(cpu=no_accelerator())  # the Trainer's own process group, created once
        group = dist.new_group(backend="gloo", timeout=STAGE_WAIT)
        return cls(dist.get_rank(), dist.get_world_size(), group)

    def release(self, go_on: bool = True) -> bool:
        """Meet every rank here; True when all of them pass ``go_on`` (rank 0 passes False
        when the run stops after its stages, or they failed: the others then stop too)."""
        if self._group is None:
            return go_on
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(go_on)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return bool(flag.item())


_SUM_KEYS = ("ce", "n", "agree", "kd", "n_kd", "tokens")


def reduce_sums(sums: MutableMapping[str, float], device: Any = None) -> None:
    """Replace the trainer's per-rank metric sums by their totals over all ranks, in place.

    Every rank must call this at the same points (the Trainer calls ``log`` on all ranks).
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return
    if dist.get_backend() != "nccl":
        device = "cpu"
    vec = torch.tensor([float(sums.get(k, 0.0)) for k in _SUM_KEYS], device=device)
    dist.all_reduce(vec)
    for k, v in zip(_SUM_KEYS, vec.tolist(), strict=True):
        if v or k in sums:
            sums[k] = v
