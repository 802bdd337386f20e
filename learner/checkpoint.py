"""Checkpoints: weights, optimizer state, Kafka offsets and de-duplication state in one file.

One safetensors file holds every tensor; its metadata holds the JSON state (offsets, seen
group ids, counters). It is written to a temporary file, fsynced and renamed over the old
one, so a crash at any moment leaves either the previous or the new checkpoint, never a mix.
It is read only from the learner's own disk (never from Kafka or Redis) and without pickle.

:func:`capture` and :func:`restore` are the same state in memory: the learner keeps one from its
last checkpoint and, when a step produces non-finite values, restores it and replays the good
steps since, so the bad step leaves no trace.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from learner.trainer import OnlineTrainer

STATE_KEY = "hap_state"
log = logging.getLogger("hap.learner.checkpoint")


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything of a trainer that a step changes: tensors (weights, optimizer state) and the rest."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def capture(trainer: OnlineTrainer, *, clone: bool = True) -> Snapshot:
    """The trainer's state; ``clone=False`` shares the live tensors (only to write them out at once)."""
    tensors: dict[str, torch.Tensor] = {}
    for tier_name, tier in trainer.tiers().items():
        for name, value in tier.state_dict().items():
            tensors[f"model.{tier_name}.{name}"] = value.detach()
    groups = []
    for i, opt in enumerate(trainer.optimizers):
        sd = opt.state_dict()
        groups.append(sd["param_groups"])
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                tensors[f"opt.{i}.{pid}.{key}"] = torch.as_tensor(value)
    # on the host whatever the training device: a checkpoint has one format (and .cpu() of a host
    # tensor is the tensor itself, so clone=False still shares)
    tensors = {k: (v.clone() if clone else v).contiguous().cpu() for k, v in tensors.items()}
    meta = {
        "optimizer_groups": groups, "steps": trainer.steps, "samples_seen": trainer.samples_seen,
        "conflict_ema": trainer.sampler.conflict_ema, "sampler_rng": trainer.sampler.rng.bit_generator.state,
        "metrics": {name: vars(m) for name, m in trainer.metrics.items()},
        "mixer": trainer.mixer.state() if trainer.mixer is not None else None,
    }
    return Snapshot(tensors, copy.deepcopy(meta) if clone else meta)


class CheckpointMismatch(ValueError):
    """The checkpoint holds a tier of another architecture than the trainer's: a tensor the trainer's
    tier does not have, or one of another shape. ``names`` lists them (``tier.tensor``)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"the checkpoint's tensors {', '.join(names[:5])} do not fit this learner's tiers (a "
                         f"checkpoint of another architecture: move it aside to start afresh)")
        self.names = names


def restore(trainer: OnlineTrainer, snapshot: Snapshot) -> None:
    """Put ``trainer`` back in the state ``snapshot`` holds.

    A checkpoint written before a tier gained a part (e.g. the light tier's non-linear wide part)
    lacks that part's tensors: the rest is restored, the new part keeps its initial weights (each
    starts at 0 in the score) and the optimizers start afresh, with a warning. A checkpoint with a
    tensor the trainer has not, or of another shape, raises :class:`CheckpointMismatch`.
    """
    tensors, meta = snapshot.tensors, snapshot.meta
    foreign, missing = [], []
    saved_tiers = {}
    for tier_name, tier in trainer.tiers().items():
        prefix = f"model.{tier_name}."
        saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = tier.state_dict()
        foreign += [f"{tier_name}.{k}" for k, v in saved.items() if k not in own or own[k].shape != v.shape]
        missing += [f"{tier_name}.{k}" for k in own.keys() - saved.keys()]
        saved_tiers[tier_name] = saved
    if foreign:
        raise CheckpointMismatch(foreign)
    for tier_name, tier in trainer.tiers().items():
        tier.load_state_dict(saved_tiers[tier_name], strict=not missing)
    if missing:
        log.warning("the checkpoint predates %s: restored the rest, these start from their initial weights and the "
                    "optimizers afresh", ", ".join(sorted(missing)))
        trainer.reset_optimizers()
    for i, opt in enumerate(trainer.optimizers if not missing else ()):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            parts = key.split(".")
            if parts[0] == "opt" and int(parts[1]) == i:
                state.setdefault(int(parts[2]), {})[parts[3]] = value.clone()
        opt.load_state_dict({"state": state, "param_groups": copy.deepcopy(meta["optimizer_groups"][i])})
    trainer.steps, trainer.samples_seen = meta["steps"], meta["samples_seen"]
    trainer.sampler.conflict_ema = meta["conflict_ema"]
    trainer.sampler.rng.bit_generator.state = meta["sampler_rng"]
    for name, values in meta["metrics"].items():
        vars(trainer.metrics[name]).update(copy.deepcopy(values))
    if trainer.mixer is not None and meta.get("mixer") is not None:
        trainer.mixer.load(meta["mixer"])


def share(trainer: OnlineTrainer, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's trainer and checkpoint ``state`` on every rank of ``trainer.reducer`` (at start-up,
    once rank 0 read the checkpoint): every rank starts from the same weights, optimizers, sampler
    and counters. Returns rank 0's ``state``."""
    reducer = trainer.reducer
    if reducer.world == 1:
        return state
    header = b""
    if reducer.rank == 0:
        snapshot = capture(trainer, clone=False)
        header = json.dumps({"meta": snapshot.meta, "state": state, "tensors": {
            k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in snapshot.tensors.items()}}).encode()
    shared = json.loads(reducer.share_bytes(header))
    tensors = snapshot.tensors if reducer.rank == 0 else {
        k: torch.empty(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in shared["tensors"].items()}
    for name in sorted(tensors):
        reducer.share(tensors[name])
    if reducer.rank != 0:
        restore(trainer, Snapshot(tensors, shared["meta"]))
    return shared["state"]


def weights_finite(trainer: OnlineTrainer) -> bool:
    """True when every weight of every tier is finite (no NaN, no inf) and none is absurdly large.

    One float32 sum per tensor (over 10x cheaper than ``isfinite``): a NaN or inf makes it
    non-finite, and so do weights large enough to overflow it (|w| around 1e32), which no
    healthy model has either.
    """
    with torch.no_grad():
        sums = [p.sum() for tier in trainer.tiers().values() for p in tier.parameters()]
    return bool(torch.isfinite(torch.stack(sums)).all())


def save(path: Path, trainer: OnlineTrainer, state: dict[str, Any]) -> None:
    """Atomically write ``trainer``'s weights and optimizers plus the JSON ``state``."""
    write(path, capture(trainer, clone=False), state)


def write(path: Path, snapshot: Snapshot, state: dict[str, Any]) -> None:
    """Atomically write ``snapshot`` plus the JSON ``state``; durable (fsynced, renamed, the
    directory fsynced) when it returns. Touches no trainer: a background thread writes a snapshot
    captured (cloned) on the training loop while training goes on."""
    meta = {"state": state, **snapshot.meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(snapshot.tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a machine crash once its directory is on disk
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: Path, trainer: OnlineTrainer) -> dict[str, Any] | None:
    """Restore ``trainer`` from ``path``; returns the JSON state, or None without a checkpoint."""
    meta = _meta(path)
    if meta is None:
        return None
    restore(trainer, Snapshot(load_file(str(path)), meta))
    return meta["state"]


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON state of the checkpoint at ``path`` (offsets, seen ids, last version published)
    without reading its tensors; None without a checkpoint.

    Examples
    --------
    >>> read_state(Path("/nonexistent/checkpoint.safetensors")) is None
    True
    """
    meta = _meta(path)
    return None if meta is None else meta["state"]


def _meta(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[STATE_KEY])
