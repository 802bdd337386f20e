"""Resume training from a published model version instead of the learner's own weights.

``hap learner --from-version V`` (after a rollback: the version pinned, or any kept one) loads
version V's tensors from the model store into the trainer's tiers and starts both tiers'
optimizers afresh (their state belongs to the weights being replaced). Everything else comes from
the learner's checkpoint: the Kafka offsets and the ids of groups trained (so the stream resumes
where the learner left off, and the samples between V and the checkpoint are not trained again),
the step counters and the progressive metrics.

Examples
--------
>>> from learner.trainer import OnlineTrainer
>>> source, target = OnlineTrainer(seed=1), OnlineTrainer(seed=2)
>>> tiers = {name: tier.export() for name, tier in source.tiers().items()}
>>> load_weights(target, tiers, version=7)
>>> bool((target.light.item_emb.weight == source.light.item_emb.weight).all())
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from learner.trainer import OnlineTrainer


class ResumeError(RuntimeError):
    """A version whose tiers this learner cannot take (another architecture or size); ``version``
    and ``tier`` say which."""

    def __init__(self, message: str, version: int, tier: str) -> None:
        super().__init__(message)
        self.version, self.tier = version, tier


def load_weights(trainer: OnlineTrainer, tiers: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]], *,
                 version: int) -> None:
    """Put the serving forms ``tiers`` (a :class:`feature_store.model_store.LoadedVersion`'s) into
    ``trainer``'s tiers and reset its optimizers; raises :class:`ResumeError` when a tier is missing
    or its spec is not the one this trainer builds (nothing is changed then)."""
    own = trainer.tiers()
    for name, tier in own.items():
        if name not in tiers:
            raise ResumeError(f"version {version} has no {name} tier", version, name)
        spec = tier.export()[1]
        if tiers[name][1] != spec:
            raise ResumeError(f"version {version}'s {name} tier was trained with {tiers[name][1]}; this learner "
                              f"builds {spec}", version, name)
    with torch.no_grad():
        for name, tier in own.items():
            device = next(tier.parameters()).device
            tier.load_state_dict({k: torch.from_numpy(np.array(v)).to(device) for k, v in tiers[name][0].items()})
    trainer.reset_optimizers()  # their moments and accumulators belong to the replaced weights
