"""`hap learner`: the online learner of both tiers."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner.distributed import Reducer


def add_parser(sub: argparse._SubParsersAction) -> None:
    from deploy.settings import Settings, env_name
    from feature_store.registry import METHODS

    s = Settings.load()
    p = sub.add_parser("learner")
    p.add_argument("--method", choices=METHODS, default=s.learner_method, help="training method")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when a GPU is visible, else the CPU), cpu or cuda[:n]; weights and "
                        "checkpoints are the same whatever the device")
    p.add_argument("--batch-groups", type=int,
                   help="the most groups one step trains on (default 256): each step takes every group already "
                        "fetched, up to this (big batches while behind, small ones when caught up)")
    p.add_argument("--publish-interval", type=float, default=s.publish_interval_s,
                   help="seconds between published versions")
    p.add_argument("--publish-steps", type=int, default=50, help="publish after this many steps, if sooner")
    p.add_argument("--checkpoint-interval", type=float, default=10.0, help="seconds between checkpoints")
    p.add_argument("--keep-versions", type=int, default=5, help="published versions kept in Redis")
    p.add_argument("--seed", type=int, default=0, help="the trainer's seed")
    p.add_argument("--budgets", type=lambda v: tuple(float(b) for b in v.split(",") if b), default=(),
                   help="comma-separated DAMR budgets whose progressive metrics the manifest also records "
                        "(as damr@<budget>), beside the serving budget's (damr) (default: none)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (of each rank)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel ranks on this machine (default 1): `hap learner --nproc N` starts N ranks "
                        "through torchrun (each consumes its share of the samples partitions and every rank takes "
                        "the same step; rank 0 publishes); `torchrun ... -m deploy.cli learner` runs one rank of a "
                        "job torchrun started, on one or more machines (docs/deploy.md)")
    p.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without samples (default: never)")
    p.add_argument("--metrics-port", type=int, help=f"default: {env_name('learner_metrics_port')} or 9102")
    p.add_argument("--from-version", type=int, metavar="V",
                   help="start from the weights of the published version V (kept: `hap models list`) instead of "
                        "the checkpoint's; offsets come from the checkpoint, the optimizers start afresh; applied "
                        "once (the checkpoint records it); default: none, the checkpoint's weights")


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args.nproc)
    import torch
    from prometheus_client import start_http_server

    from deploy.settings import Settings
    from feature_store.model_store import ModelStoreError
    from learner.resume import ResumeError
    from learner.service import LearnerConfig, LearnerService
    from learner.trainer import OnlineTrainer

    torch.set_num_threads(args.threads)
    s = Settings.load()
    reducer, device = _join_ranks(args.device)
    # one metrics port per rank of a machine: the given one, then the next ones
    start_http_server((args.metrics_port or s.learner_metrics_port) + int(os.environ.get("LOCAL_RANK", 0)),
                      addr=s.metrics_host)
    cfg = LearnerConfig(
        bootstrap=s.kafka_bootstrap, redis=s.redis, redis_prefix=s.redis_prefix, kafka_security=s.kafka_security,
        samples_topic=s.topic("samples"),
        checkpoint_path=s.data_dir / "learner" / "checkpoint.safetensors",
        publish_s=args.publish_interval, publish_steps=args.publish_steps,
        checkpoint_s=args.checkpoint_interval, keep_versions=args.keep_versions,
        lease_ttl_s=s.learner_lease_ttl_s, lease_wait_s=s.learner_lease_wait_s, from_version=args.from_version,
        snapshot_every_s=s.model_snapshot_every_min * 60, snapshot_keep_s=s.model_snapshot_keep_h * 3600,
        **({} if args.batch_groups is None else {"batch_groups": args.batch_groups}),
    )
    try:
        service = LearnerService(cfg, OnlineTrainer(method=args.method, seed=args.seed, device=device,
                                                     damr_budget=s.damr_budget, extra_budgets=args.budgets,
                                                     reducer=reducer))
    except (ModelStoreError, ResumeError) as exc:  # --from-version: a version not kept, another architecture
        logging.getLogger("hap.learner").error("not started: %s", exc)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):  # graceful: train what was polled, publish, checkpoint
        signal.signal(sig, lambda *_: service.stop())
    service.run(max_idle_s=args.exit_when_idle)
    logging.getLogger("hap.learner").info("stopped after %d steps, %d versions", service.trainer.steps,
                                          service.versions)
    return 0


def _launch(nproc: int) -> int:
    """Run this command as ``nproc`` ranks on this machine (torchrun's launcher, a local rendezvous);
    the exit status is the job's: one rank failing stops every rank (1); SIGTERM stops every rank
    gracefully (0)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    argv, skip = [], False
    for arg in sys.argv[1:]:  # this command's arguments, without --nproc
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    try:
        torchrun(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "deploy.cli",
                                               *argv]))
    except ChildFailedError as exc:
        logging.getLogger("hap.learner").error("a rank failed; the job stopped: %s", exc.get_first_failure()[1])
        return 1
    except SignalException as exc:  # SIGTERM or SIGINT, handed on to every rank: each stopped as one learner
        # does (trained what it took; rank 0 published and checkpointed), within torchrun's 30 s
        logging.getLogger("hap.learner").warning("stopped by signal %d", exc.sigval)
        return 0
    return 0


def _join_ranks(device: str) -> tuple[Reducer, str]:
    """The data-parallel ranks this process is one of (torchrun's environment: ``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``...), or one rank; and the device to train on (on GPUs, a rank's own:
    ``cuda:LOCAL_RANK``; gloo for host tensors, NCCL for GPU ones)."""
    import torch.distributed as dist

    from learner.distributed import Reducer
    from learner.trainer import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Reducer(), device
    _end_with_parent()
    cuda = resolve_device(device).type == "cuda"
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")  # counts and state stay on the host
    return Reducer(distributed=True), f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else device


def _end_with_parent() -> None:
    """Be SIGKILLed when the process that started this one ends (Linux): torchrun starts each rank
    in a session of its own, so a launcher SIGKILLed would otherwise leave its ranks running."""
    import ctypes

    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
