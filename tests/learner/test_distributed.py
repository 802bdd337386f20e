"""Data-parallel GHCL: two gloo ranks, each on its share of every batch, take the steps one trainer
takes on the whole batches (weights, optimizer state, sampling, mixing weight, conflict EMA,
touched rows, progressive metrics), starting from rank 0's state handed to every rank.

In float64: float32's rounding differs between a sum over a whole batch and the sum of its two
halves' sums, and Adam and Adagrad move a coordinate whose gradient is rounding noise (0 in exact
arithmetic: a softmax path cannot see a bias) by a full step of the noise's sign."""

import socket
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from feature_store.featurize import ID_BUCKETS
from learner import checkpoint
from learner.distributed import Reducer
from learner.trainer import OnlineTrainer

from .groups import simulated_groups

WORLD = 2
#: each step's groups, split between the ranks at these counts (rank 0 first); the last step leaves rank 1 none
SPLITS = ((3, 3), (4, 2), (1, 5), (5, 0))


def _batches():
    # every other random negative made a constructed ranking negative (rn), the kind sampling drops
    groups = [msgspec.structs.replace(g, items=[msgspec.structs.replace(it, source="rn") if it.source == "gn" and n % 2
                                                else it for n, it in enumerate(g.items)])
              for g in simulated_groups(sum(map(sum, SPLITS)), seed=5, n_candidates=50)]
    out, at = [], 0
    for split in SPLITS:
        out.append([groups[at + sum(split[:r]): at + sum(split[:r + 1])] for r in range(WORLD)])
        at += sum(split)
    return out


def _run(reducer: Reducer, share: list[int] | None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train on every batch (``share``: this rank's part of each; None: all of it); the state after,
    the id tables cut to the rows trained (every other row is as initialised, from one seed)."""
    # each rank starts from its own seed, then takes rank 0's weights and state, as the service does
    # with rank 0's checkpoint at start-up
    trainer = OnlineTrainer(seed=reducer.rank, reducer=reducer)
    assert checkpoint.share(trainer, {"from": reducer.rank}) == {"from": 0}
    trainer.sampler.max_share = 0.6  # constructed negatives are dropped from the first step: sampling counts
    for batch in _batches():
        trainer.step(batch[share] if share is not None else [g for part in batch for g in part])
    quality = trainer.quality()
    touched = trainer.take_touched()
    rows = torch.as_tensor(np.unique(np.concatenate([r for t in touched.values() for r in t.values()])))
    snapshot = checkpoint.capture(trainer, clone=False)
    tensors = {k: (v[rows] if v.ndim and v.shape[0] == ID_BUCKETS else v).contiguous()
               for k, v in snapshot.tensors.items()}
    tables = {f"{t}.{n}": r.tolist() for t, names in touched.items() for n, r in names.items()}
    meta = {k: snapshot.meta[k] for k in ("steps", "samples_seen", "conflict_ema", "sampler_rng", "mixer")}
    return tensors, {**meta, "quality": quality, "touched": tables, "fallback": float(trainer.light.fallback)}


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        tensors, meta = _run(Reducer(distributed=True), rank)
        checkpoint.write(Path(out) / f"rank{rank}.safetensors", checkpoint.Snapshot(tensors, meta), {})
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_on_split_batches_take_the_steps_of_one_trainer_on_the_whole_batches(tmp_path):
    ranks = mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    torch.set_default_dtype(torch.float64)
    try:  # the one trainer, meanwhile
        expected, expected_meta = _run(Reducer(), None)
    finally:
        torch.set_default_dtype(torch.float32)
    while not ranks.join():
        pass
    for rank in range(WORLD):
        path = tmp_path / f"rank{rank}.safetensors"
        tensors, meta = load_file(str(path)), checkpoint._meta(path)
        assert meta["touched"] == expected_meta["touched"]  # hence the rows compared are the same
        assert tensors.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(tensors[name], value, rtol=1e-5, atol=1e-5, msg=f"rank {rank}: {name}")
        assert meta["steps"] == expected_meta["steps"] and meta["samples_seen"] == expected_meta["samples_seen"]
        assert meta["sampler_rng"] == expected_meta["sampler_rng"]
        assert meta["fallback"] == expected_meta["fallback"]
        assert meta["conflict_ema"] == pytest.approx(expected_meta["conflict_ema"], rel=1e-9)
        assert meta["mixer"]["correct"] == pytest.approx(expected_meta["mixer"]["correct"], rel=1e-9)
        assert _close(meta["quality"], expected_meta["quality"])
    assert expected_meta["mixer"]["pairs"] > 0  # the mixing weight's evidence was compared too


def _close(a, b) -> bool:
    if isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in b)
    return a == b if b is None or isinstance(b, int) else a == pytest.approx(b, rel=1e-9)
