"""A trainer restored from its checkpoint continues exactly as if it had never stopped."""

import torch

from learner import checkpoint
from learner.trainer import OnlineTrainer

from .groups import simulated_groups


def test_restored_trainer_makes_identical_steps(tmp_path):
    groups = simulated_groups(12)
    a = OnlineTrainer(seed=1)
    for i in range(0, 6, 3):
        a.step(groups[i:i + 3])
    checkpoint.save(tmp_path / "ckpt.safetensors", a, {"offsets": {"0": 6}})
    b = OnlineTrainer(seed=99)
    assert checkpoint.load(tmp_path / "ckpt.safetensors", b) == {"offsets": {"0": 6}}
    for i in range(6, 12, 3):
        a.step(groups[i:i + 3])
        b.step(groups[i:i + 3])
    for (name, pa), pb in zip(a.light.state_dict().items(), b.light.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert a.metrics["light"].report() == b.metrics["light"].report() and b.steps == 4
