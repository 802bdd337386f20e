"""`hap eval` end to end on a tiny synthetic run: one row per arm and seed, a results page, plots."""

import json

from deploy.cli import main


def test_eval_writes_rows_per_arm_and_seed_and_a_results_page(tmp_path):
    out = tmp_path / "results"
    code = main(["eval", "--out", str(out), "--markdown", str(tmp_path / "results.md"), "--seeds", "2",
                 "--groups", "64", "--loop-requests", "32", "--candidates", "150"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    offline = [r for r in rows if not r.get("closed_loop")]
    assert {(r["method"], r["policy"]) for r in offline} == {
        (m, p) for m in ("mixed", "ghcl") for p in ("light", "damr", "expressive_all")}
    assert len(offline) == 2 * 2 * 7 and {r["seed"] for r in offline} == {0, 1}  # light, 5 budgets, expressive_all
    damr = sorted((r["budget"], r["expressive_evals_per_request"]) for r in offline if r["policy"] == "damr")
    assert damr[0][1] < damr[-1][1]  # a larger budget routes more candidates
    assert all(0 <= r["consistency_at_k"] <= 1 and r["serve_cpu_ms_per_request"] > 0 for r in offline)
    loop = [r for r in rows if r.get("closed_loop")]
    assert len(loop) == 2 * 5 and all(r["reward_per_request"] > 0 for r in loop)
    page = (tmp_path / "results.md").read_text()
    assert "| ghcl | damr | 0.2 |" in page and "| damr@0.2 | " in page
    assert "![closed_loop](results/closed_loop.png)" in page
    assert all((out / f"{n}.png").stat().st_size > 1000 for n in ("conflict", "damr_budget", "closed_loop"))
