"""Paired Δ between arms of two separate hap eval runs of the same log, over their common blocks."""

import json

import pytest

from deploy.evaluation.compare import compare


def write(path, arms):
    rows = [{"source": "replay", "method": m, "policy": p, "budget": b, "block": k, "gauc": g}
            for (m, p, b), per_block in arms.items() for k, g in enumerate(per_block)]
    rows.append({"source": "replay", "method": "x", "policy": "light", "budget": 0.0, "gauc": 0.9})  # overall row
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_an_arm_of_one_run_is_paired_block_by_block_with_an_arm_of_another(tmp_path):
    anchor = [0.5] * 10
    a = write(tmp_path / "a.json", {("gbdt", "counter", 0.0): [0.6] * 5 + [0.7] * 5, ("ctr", "counter", 0.0): anchor})
    b = write(tmp_path / "b.json", {("ghcl", "light", 0.0): [0.55] * 10, ("ctr", "counter", 0.0): anchor})
    out = compare([a, b], ("gbdt", "counter", 0.0), ("ghcl", "light", 0.0))
    assert out["all blocks"][0] == pytest.approx(0.1)
    mean, half = out["blocks 5-10"]  # the blocks after the dev split (40%): one at +0.05, five at +0.15
    assert mean == pytest.approx((0.05 + 5 * 0.15) / 6) and half > 0
    with pytest.raises(SystemExit, match="no blocks"):
        compare([a], ("gbdt", "counter", 0.0), ("ghcl", "light", 0.0))
