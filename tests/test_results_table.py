"""The lab's closing table shows the recipe's own runs, not a mix of 06's extra seeds."""
from __future__ import annotations

import json

from kdtp.results import latest_by_run


def _rows():
    return [{"run": "teacher", "seed": 0, "test_acc": 0.90},
            {"run": "baseline", "seed": 0, "test_acc": 0.8478},
            {"run": "kd", "seed": 0, "test_acc": 0.8522},
            {"run": "baseline", "seed": 1, "test_acc": 0.8483},
            {"run": "kd", "seed": 1, "test_acc": 0.8573},
            {"run": "baseline", "seed": 2, "test_acc": 0.8481},
            {"run": "only_seed_3", "seed": 3, "test_acc": 0.5}]


def test_latest_row_overall_without_seeds():
    rows = latest_by_run(_rows())
    assert rows["baseline"]["seed"] == 2 and rows["kd"]["seed"] == 1


def test_the_recipes_seed_wins_over_later_rows_of_other_seeds():
    rows = latest_by_run(_rows(), seeds={0})
    assert {r: rows[r]["test_acc"] for r in ("teacher", "baseline", "kd")} == \
        {"teacher": 0.90, "baseline": 0.8478, "kd": 0.8522}
    assert rows["only_seed_3"]["seed"] == 3          # a run with none of those seeds still shows
    retrained = _rows() + [{"run": "baseline", "seed": 0, "test_acc": 0.8490}]
    assert latest_by_run(retrained, seeds={0})["baseline"]["test_acc"] == 0.8490   # latest of seed 0


def test_lab_comparison_text_reads_seed_zero(tmp_path, monkeypatch):
    from kdtp.lab import comparison_text
    from kdtp.recipes import get_recipe
    from kdtp.store import run_folder
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path))
    folder = run_folder(get_recipe("cpu_air", smoke=False))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.jsonl", "w") as f:
        for r in _rows():
            f.write(json.dumps({**r, "n_test": 10000, "recipe": "cpu_air"}) + "\n")
    text = comparison_text("cpu_air", smoke=False)
    assert "0.8478" in text and "0.8522" in text and "0.8481" not in text and "0.8573" not in text
