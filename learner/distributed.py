"""Data-parallel training: what the ranks of a ``torch.distributed`` group add up, so that every rank
takes the step one learner would take on the union of their batches.

A :class:`Reducer` is the trainer's view of the ranks (``learner.trainer.OnlineTrainer``'s
``reducer``): by default one rank, and every call returns its input, so the single-process
learner runs the same code. Over an initialised process group (gloo on CPU, launched by
``torchrun`` or ``hap learner --nproc N``), each step of every rank calls, in the same order:

- :meth:`Reducer.offset`: every rank's item count (an ``all_gather``): the rank's place among
  the step's items in rank order, from which it takes its share of the step's random draws;
- :meth:`Reducer.sum`: an ``all_reduce`` of the step's counts (the losses' denominators, the
  mixing weight's evidence);
- :meth:`Reducer.sum_gradients`: every gradient, dense ones summed in one ``all_reduce``, the id
  tables' sparse ones as rows: each rank's touched row indices and their values are
  ``all_gather``-ed, then the rows of all ranks are summed (``coalesce``).

Collectives block until every rank calls them: ranks step in lockstep (a rank with no group
steps on an empty batch). The service adds its own (``learner.service``): what the ranks polled,
rank 0's decisions, every rank's partitions' state at a checkpoint (:meth:`Reducer.gather_bytes`),
rank 0's checkpoint at start-up (:meth:`Reducer.share_bytes`, :meth:`Reducer.share`).

Examples
--------
>>> import torch
>>> one = Reducer()  # one rank
>>> one.world, one.offset(5), one.sum(torch.tensor([1.0, 2.0])).tolist()
(1, (0, 5), [1.0, 2.0])
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Reducer:
    """The ranks of the default ``torch.distributed`` process group (``distributed=True``; it must be
    initialised), or one rank."""

    def __init__(self, distributed: bool = False) -> None:
        self.world = dist.get_world_size() if distributed else 1
        self.rank = dist.get_rank() if distributed else 0

    def offset(self, n: int) -> tuple[int, int]:
        """The number of items of the ranks before this one, and of all ranks, given this rank's ``n``."""
        if self.world == 1:
            return 0, n
        sizes = self._gather(torch.tensor([n], dtype=torch.long))
        return int(sizes[: self.rank].sum()), int(sizes.sum())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new tensor on more than one rank)."""
        if self.world == 1:
            return values
        out = values.clone()
        dist.all_reduce(out)
        return out

    def maximum(self, values: torch.Tensor) -> torch.Tensor:
        """``values``' largest over the ranks, element by element."""
        if self.world == 1:
            return values
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order, on every rank (what the service's checkpoint gathers:
        each rank's partitions' offsets and seen ids, as JSON)."""
        if self.world == 1:
            return [data]
        sizes = self._gather(torch.tensor([len(data)], dtype=torch.long)).tolist()
        buffer = torch.zeros(max(sizes), dtype=torch.uint8)
        buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buffer[:0]
        parts = [torch.empty_like(buffer) for _ in range(self.world)]
        dist.all_gather(parts, buffer)
        return [part[:size].numpy().tobytes() for part, size in zip(parts, sizes, strict=True)]

    def share_bytes(self, data: bytes) -> bytes:
        """Rank 0's ``data`` on every rank (what the others pass is ignored)."""
        if self.world == 1:
            return data
        size = torch.tensor([len(data)], dtype=torch.long)
        dist.broadcast(size, 0)
        buffer = torch.zeros(int(size), dtype=torch.uint8)
        if self.rank == 0 and data:
            buffer[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dist.broadcast(buffer, 0)
        return buffer.numpy().tobytes()

    def share(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` with rank 0's (in place; one shape on every rank)."""
        if self.world > 1:
            dist.broadcast(tensor, 0)

    def sum_gradients(self, params: list[torch.Tensor], grads: list[torch.Tensor | None],
                      sparse: list[bool]) -> list[torch.Tensor | None]:
        """Each parameter's gradient summed over the ranks: a dense one whole, a ``sparse`` one (an id
        table's, ``(rows, dim)`` COO) by rows, coalesced. ``None`` where no rank has a gradient;
        every rank passes the same parameters in the same order."""
        if self.world == 1:
            return grads
        device = params[0].device
        dense = [i for i, s in enumerate(sparse) if not s]
        # one buffer: the dense values (zeros for none), then a "has a gradient" flag per parameter
        flat = torch.cat([*(torch.zeros(params[i].numel(), dtype=params[i].dtype, device=device)
                            if grads[i] is None else grads[i].reshape(-1) for i in dense),
                          torch.tensor([float(g is not None) for g in grads], dtype=params[0].dtype, device=device)])
        dist.all_reduce(flat)
        *parts, flags = flat.split([*(params[i].numel() for i in dense), len(params)])
        present = (flags > 0).tolist()
        out: list[torch.Tensor | None] = [None] * len(params)
        for i, part in zip(dense, parts, strict=True):
            out[i] = part.view_as(params[i])
        rows = [i for i, s in enumerate(sparse) if s]
        if rows:
            empty = [torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long, device=device),
                                             torch.zeros(0, *params[i].shape[1:], dtype=params[i].dtype,
                                                         device=device), params[i].shape) for i in rows]
            mine = [grads[i].coalesce() if grads[i] is not None else e for i, e in zip(rows, empty, strict=True)]
            for i, g in zip(rows, self._sum_sparse(mine), strict=True):
                out[i] = g
        return [g if p else None for g, p in zip(out, present, strict=True)]

    def _sum_sparse(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sparse ``(rows, dim)`` gradients summed by rows: every rank's row indices and values
        gathered (padded to the largest rank's), then coalesced."""
        device = grads[0].device
        counts = torch.tensor([g.indices().shape[1] for g in grads], dtype=torch.long, device=device)
        all_counts = self._gather(counts).view(self.world, len(grads)).cpu()
        most = int(all_counts.sum(1).max())
        dims = [g.shape[1] for g in grads]
        indices = torch.zeros(most, dtype=torch.long, device=device)
        values = torch.zeros(most, max(dims), dtype=grads[0].dtype, device=device)
        n = 0
        for g, d in zip(grads, dims, strict=True):
            k = g.indices().shape[1]
            indices[n: n + k] = g.indices()[0]
            values[n: n + k, :d] = g.values()
            n += k
        gathered_i = [torch.empty_like(indices) for _ in range(self.world)]
        gathered_v = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(gathered_i, indices)
        dist.all_gather(gathered_v, values)
        starts = (torch.cumsum(all_counts, 1) - all_counts).tolist()  # (world, grads): where each block starts
        ends = torch.cumsum(all_counts, 1).tolist()
        out = []
        for j, (g, d) in enumerate(zip(grads, dims, strict=True)):
            ranks = range(self.world)
            rows = torch.cat([gathered_i[r][starts[r][j]: ends[r][j]] for r in ranks])
            vals = torch.cat([gathered_v[r][starts[r][j]: ends[r][j], :d] for r in ranks])
            out.append(torch.sparse_coo_tensor(rows[None], vals, g.shape).coalesce())
        return out

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` (one shape on every rank), concatenated in rank order."""
        parts = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(parts, values)
        return torch.cat(parts)
