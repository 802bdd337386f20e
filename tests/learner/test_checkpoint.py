"""A trainer restored from its checkpoint continues exactly as if it had never stopped."""

import pytest
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


def test_a_checkpoint_from_before_the_non_linear_wide_part_resumes_with_that_part_fresh(tmp_path, caplog):
    groups = simulated_groups(6)
    old = OnlineTrainer(seed=1, dense_hidden=0)
    old.step(groups[:3])
    checkpoint.save(tmp_path / "ckpt.safetensors", old, {"offsets": {"0": 3}})
    new = OnlineTrainer(seed=2)
    assert checkpoint.load(tmp_path / "ckpt.safetensors", new) == {"offsets": {"0": 3}}
    restored = new.light.state_dict()
    for name, value in old.light.state_dict().items():
        assert torch.equal(restored[name], value), name
    assert float(new.light.dense_mlp[-1].weight.abs().sum()) == 0.0  # the new part adds nothing yet
    assert new.steps == old.steps and "predates light.dense_mlp" in caplog.text
    new.step(groups[3:])  # fresh optimizers cover every parameter, the new part included
    assert float(new.light.dense_mlp[-1].weight.abs().sum()) > 0.0


def test_a_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    checkpoint.save(tmp_path / "ckpt.safetensors", OnlineTrainer(seed=1, dim=8), {})
    with pytest.raises(checkpoint.CheckpointMismatch, match="light.item_emb.weight") as error:
        checkpoint.load(tmp_path / "ckpt.safetensors", OnlineTrainer(seed=1))
    assert "light.item_emb.weight" in error.value.names
