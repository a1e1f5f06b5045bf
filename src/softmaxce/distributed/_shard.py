"""Which classes this process holds, and the one collective of the forward.

The slices of the classes are contiguous and in rank order: rank ``r`` holds classes
``[offset_r, offset_r + V_r)`` with ``offset_r = V_0 + ... + V_{r-1}``. The sizes ``V_r``
are gathered once per process group and local size (``shard``: one all-gather of one
integer per rank, a host read of ``P`` numbers) and kept; every later call of the loss costs
exactly one collective, ``gather_rows`` (and the backward of the linear loss one more,
``sum_over_ranks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# torch >= 2.10 names the all-gather into one tensor ``all_gather_single`` and deprecates the
# old name (a FutureWarning per call); both are the same c10d ``_allgather_base``.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass(frozen=True)
class Shard:
    """This rank's place in the split of the classes (all in class counts)."""

    rank: int  # this process's rank in the group
    sizes: tuple[int, ...]  # V_r of every rank of the group, in rank order

    @property
    def offset(self) -> int:
        """The global index of this rank's first class."""
        return sum(self.sizes[: self.rank])

    @property
    def n_classes(self) -> int:
        """The number of classes of the full logits."""
        return sum(self.sizes)

    @property
    def world_size(self) -> int:
        return len(self.sizes)


# (group, V_local, device type) -> Shard. The group object itself is part of the key (not its
# id): a group destroyed and created anew is a new key, never a stale hit.
_SHARDS: dict[tuple[Any, int, str], Shard] = {}


def resolve_group(group: Any) -> Any:
    """The process group of a call (``None``: the default group), checked to be usable."""
    if not (dist.is_available() and dist.is_initialized()):
        msg = (
            "vocab_parallel_cross_entropy needs an initialised torch.distributed process "
            "group (torch.distributed.init_process_group), got none"
        )
        raise RuntimeError(msg)
    g = dist.group.WORLD if group is None else group
    if not isinstance(g, dist.ProcessGroup):
        msg = f"group must be None or a torch.distributed.ProcessGroup, got {type(g).__name__}"
        raise TypeError(msg)
    if dist.get_rank(g) < 0:
        msg = "group: this process is not a member of the process group it was given"
        raise ValueError(msg)
    return g


def shard(group: Any, v_local: int, device: torch.device) -> Shard:
    """This rank's ``Shard`` in ``group`` (sizes gathered on the first call, then kept).

    The split of a group's classes is assumed fixed for a given local size, as a model's
    vocabulary head is; every rank must call with its slice in the same order of calls.
    """
    key = (group, v_local, device.type)
    found = _SHARDS.get(key)
    if found is not None:
        return found
    world = dist.get_world_size(group)
    mine = torch.tensor([v_local], dtype=torch.int64, device=device)
    sizes = torch.empty(world, dtype=torch.int64, device=device)
    _ALL_GATHER(sizes, mine, group=group)
    found = Shard(dist.get_rank(group), tuple(int(s) for s in sizes.tolist()))
    _SHARDS[key] = found
    return found


def gather_rows(packed: torch.Tensor, group: Any, world_size: int) -> torch.Tensor:
    """The ``(N, k)`` per-row statistics of every rank, ``(P, N, k)`` in rank order: the one
    collective of a forward (an all-gather; every rank receives ``P * N * k`` numbers)."""
    n, k = packed.shape
    out = torch.empty((world_size * n, k), dtype=packed.dtype, device=packed.device)
    _ALL_GATHER(out, packed.contiguous(), group=group)
    return out.view(world_size, n, k)


def sum_over_ranks(t: torch.Tensor, group: Any) -> torch.Tensor:
    """``t`` summed over the ranks of ``group``, in place (an all-reduce): the one collective
    of the linear loss's backward (its partial input gradients)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t
