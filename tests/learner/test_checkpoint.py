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


def test_a_captured_snapshot_written_later_holds_the_state_at_its_capture(tmp_path):
    """The learner's writer thread writes a snapshot while the loop trains on: the file must hold the
    weights and optimizer state of the moment of the capture, not of the steps since."""
    groups = simulated_groups(9)
    a = OnlineTrainer(seed=1)
    a.step(groups[:3])
    snapshot = checkpoint.capture(a)
    expected = {k: v.clone() for k, v in checkpoint.capture(a, clone=False).tensors.items()}
    a.step(groups[3:6])  # training goes on before the write
    checkpoint.write(tmp_path / "ckpt.safetensors", snapshot, {"offsets": {"0": 3}})
    b = OnlineTrainer(seed=99)
    assert checkpoint.load(tmp_path / "ckpt.safetensors", b) == {"offsets": {"0": 3}} and b.steps == 1
    written = checkpoint.capture(b, clone=False).tensors
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert not all(torch.equal(a.light.state_dict()[k], b.light.state_dict()[k]) for k in b.light.state_dict())
