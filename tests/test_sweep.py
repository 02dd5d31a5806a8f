"""The sweep: cells are train-or-load (a second sweep trains nothing), rows are tidy and
deduplicated, plans are self-contained commands, bad input is refused before training."""
import json
import shlex
from pathlib import Path

import pytest

from kdtp import runner, sweep
from kdtp.cli import main
from kdtp.env import ConfigError

TINY = {"student_arch": "cnn_tiny", "teacher_arch": "cnn_tiny", "train_subset": 256,
        "val_subset": 64, "test_subset": 64}


def test_cells_are_the_product_of_runs_seeds_and_grid():
    plan = sweep.SweepPlan(["a", "b"], [0, 1], {"temperature": [2.0, 4.0]})
    cells = plan.cells()
    assert len(cells) == 8 and len(set(cells)) == 8
    assert cells[0].overrides == {"temperature": 2.0, "seed": 0}
    assert sweep.SweepPlan(["a"], [0, 1, 2]).cells()[2] == sweep.Cell("a", 2)


def test_grid_and_seed_input_is_checked_before_anything_trains(monkeypatch):
    assert sweep.parse_grid(["temperature=2,4", "alpha=0.1"]) == {"temperature": [2.0, 4.0], "alpha": [0.1]}
    for bad in (["temperature"], ["temperature="], ["nonsense=1,2"], ["alpha=high"], ["seed=1,2"],
                ["temperature=2,4", "temperature=8"], ["temperature=2,2.0"]):
        with pytest.raises(ConfigError):
            sweep.parse_grid(bad)
    monkeypatch.setattr(sweep, "_gpu_count", lambda: 1)
    with pytest.raises(ConfigError, match="1 GPU"):         # a second worker would land on the CPU
        sweep.run_sweep(sweep.SweepPlan(["student_pretrained_baseline"], [0, 1]), recipe="fast", smoke=True,
                        workers=2)
    with pytest.raises(ConfigError, match="both fixed"):
        sweep.run_sweep(sweep.SweepPlan(["student_pretrained_baseline"], [0], {"alpha": [0.1, 0.5]}),
                        recipe="fast", smoke=True, sets={"alpha": 0.9}, workers=1)
    assert sweep.seed_list(None, None) == [0, 1, 2]
    assert sweep.seed_list(2, "5,7") == [5, 7]
    for bad in ("a,b", "1,1", ","):
        with pytest.raises(ConfigError):
            sweep.seed_list(None, bad)


def test_sweep_trains_each_cell_once_then_only_loads(tmp_path, monkeypatch):
    out = tmp_path / "sweep.jsonl"
    plan = sweep.SweepPlan(["student_pretrained_baseline", "student_pretrained_kd_logits"], [0, 1])
    kw = dict(recipe="fast", smoke=True, sets=TINY, out=out, ckpt_dir=tmp_path / "ck",
              data_dir=tmp_path / "data", workers=1, verbose=False, progress=False)
    rows = sweep.run_sweep(plan, **kw)
    assert [(r["run"], r["seed"]) for r in rows] == [(c.run, c.seed) for c in plan.cells()]
    assert all(r["source"] == "trained" and r["smoke"] for r in rows)
    assert {r["config"]["seed"] for r in rows} == {0, 1}
    assert len({r["config_hash"] for r in rows}) == 4
    # both KD students learnt from one teacher (the teacher's seed is not the students')
    assert len({r["config"]["teacher_config"] for r in rows if r["run"].endswith("kd_logits")}) == 1
    row = rows[0]
    assert {"device", "precision", "n_test", "val_acc", "test_acc", "config", "recipe"} <= set(row)

    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr(runner, "train_run", no_training)
    again = sweep.run_sweep(plan, **kw)
    assert all(r["source"] == "loaded" for r in again)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]
    assert len(out.read_text().splitlines()) == 8          # appended ...
    assert len(sweep.read_rows(out)) == 4                   # ... read once per run and configuration
    assert "SMOKE" in sweep.summary(sweep.read_rows(out))


def test_plan_prints_one_self_contained_command_per_cell(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sweep", "student_pretrained_baseline", "--recipe", "cpu", "--seeds", "2",
                 "--grid", "label_smoothing=0,0.1", "--out", str(out), "--plan",
                 "--data-dir", str(tmp_path / "d"), "--ckpt-dir", str(tmp_path / "c")]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 4 and len(set(cmds)) == 4
    for cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[:4] == ["python", "-m", "kdtp", "sweep"]
        assert {"--recipe", "--seed-list", "--out", "--ckpt-dir", "--data-dir"} <= set(argv)
    assert not (tmp_path / "c").exists(), "--plan trains and writes nothing"
    script = tmp_path / "array.sh"
    assert main(["sweep", "--recipe", "cpu", "--slurm", str(script), "--out", str(out)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-5" in text and text.count("python -m kdtp sweep") == 7   # 6 cells + merge


def test_merge_joins_files_and_keeps_one_row_per_configuration(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = {"run": "r", "config_hash": "h1", "seed": 0, "test_acc": 0.5}
    sweep.append_row(a, row)
    sweep.append_row(b, {**row, "test_acc": 0.6})
    sweep.append_row(b, {"run": "r", "config_hash": "h2", "seed": 1, "test_acc": 0.7})
    with open(b, "a") as fh:
        fh.write('{"run": "torn')                              # a crash mid-line
    rows = sweep.merge([a, b], tmp_path / "all.jsonl")
    assert sorted(r["config_hash"] for r in rows) == ["h1", "h2"]
    assert len(sweep.read_rows(tmp_path / "all.jsonl")) == 2
    with pytest.raises(ConfigError, match="does not exist"):
        sweep.read_rows(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("argv", [
    ["sweep", "no_such_run"],
    ["sweep", "--grid", "temperature"],
    ["sweep", "--seed-list", "x"],
    ["sweep", "--set", "seed=3"],
    ["sweep", "--merge", "nothere.jsonl"],
    ["sweep", "--workers", "0"],
    ["sweep", "--grid", "temperature=1,2", "--grid", "temperature=4"],
    ["sweep", "--set", "temperature=2", "--grid", "temperature=1,2"],
    ["sweep", "--set", "alpha=0.1", "--set", "alpha=0.5"],
])
def test_bad_sweep_arguments_exit_2_in_one_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDTP_CKPT_DIR", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "checkpoints").exists()


def test_a_real_sweep_is_published_into_the_manifest_and_a_smoke_one_refused(tmp_path, capsys):
    results, manifest = tmp_path / "sweep.jsonl", tmp_path / "manifest.json"
    for seed, acc in enumerate((0.83, 0.84, 0.82)):
        sweep.append_row(results, {"run": "student_pretrained_baseline", "seed": seed, "recipe": "cpu",
                                   "test_acc": acc, "n_test": 10000, "config_hash": f"h{seed}",
                                   "smoke": False, "config": {"big": "x" * 100}})
    assert main(["publish", "--sweep", str(results), "--manifest", str(manifest)]) == 0
    rows = sweep.published_rows("cpu", manifest)
    assert sorted(r["test_acc"] for r in rows) == [0.82, 0.83, 0.84]
    assert "config" not in rows[0] and json.loads(manifest.read_text())["checkpoints"] == {}
    assert sweep.published_rows("fast", manifest) == []
    smoke = tmp_path / "smoke.jsonl"
    sweep.append_row(smoke, {"run": "r", "config_hash": "s", "test_acc": 0.3, "smoke": True})
    before = manifest.read_text()
    assert main(["publish", "--sweep", str(smoke), "--manifest", str(manifest)]) == 2
    assert "smoke" in capsys.readouterr().err and manifest.read_text() == before


def test_the_labs_extra_seeds_train_once_land_in_the_sweep_file_and_then_load(tmp_path, monkeypatch):
    from kdtp.recipes import get_recipe
    recipe = get_recipe("fast", smoke=True, **TINY)
    runs = ["student_pretrained_baseline", "student_pretrained_kd_logits"]
    kw = dict(ckpt_dir=tmp_path / "ck", data_dir=tmp_path / "data", progress=False)
    pairs = sweep.train_seeds(runs, recipe, [0, 1], **kw)
    assert list(pairs) == [0, 1] and all(list(p) == runs for p in pairs.values())
    assert all(r.config["seed"] == s and r.source == "trained" for s, p in pairs.items() for r in p.values())
    assert len({pairs[s][runs[1]].config["teacher_config"] for s in pairs}) == 1, "one teacher for every seed"
    out = runner.run_folder(recipe, tmp_path / "ck") / sweep.SWEEP_FILE
    rows = sweep.read_rows(out)
    assert sorted((r["run"], r["seed"]) for r in rows) == sorted((r, s) for s in (0, 1) for r in runs)

    def no_training(*a, **k):
        raise AssertionError("a finished seed was trained again")
    monkeypatch.setattr(runner, "train_run", no_training)
    again = sweep.train_seeds(runs, recipe, [0, 1], **kw)
    assert [r.test_acc for p in again.values() for r in p.values()] == \
        [r.test_acc for p in pairs.values() for r in p.values()]
    assert len(sweep.read_rows(out)) == 4                  # one row per run and configuration
    assert len(out.read_text().splitlines()) == 4          # a loaded run is not written again

    # the instructor's demo (load only): a seed that was never trained is left out, and said so
    monkeypatch.setenv("KDTP_LOAD_ONLY", "1")
    demo = sweep.train_seeds(runs, recipe, [0, 1, 2], **kw)
    assert list(demo) == [0, 1]
    with pytest.raises(ConfigError, match="distinct seeds"):
        sweep.train_seeds(runs, recipe, [0, 0], **kw)


def _row(run, seed, acc, **config):
    return {"run": run, "seed": seed, "test_acc": acc, "n_test": 10000, "smoke": False,
            "config_hash": f"{run}-{seed}-{sorted(config.items())}", "config": {"seed": seed, **config}}


def test_summary_never_pools_seeds_of_different_experiments():
    # two sweeps appended to one file (one with --set alpha=0.1): each KD experiment apart
    rows = [_row("student_pretrained_baseline", s, 0.84 + s / 1000, lr=1.5) for s in range(3)]
    rows += [_row("student_pretrained_kd_logits", s, acc + s / 1000, lr=1.5, alpha=alpha, teacher_config="t")
             for s in range(3) for alpha, acc in ((0.5, 0.85), (0.1, 0.82))]
    text = sweep.summary(rows)
    assert "student_pretrained_kd_logits [alpha=0.5]" in text and "[alpha=0.1]" in text
    assert "+1.00" in text and "-2.00" in text                 # each against the baseline, never averaged
    # the baseline in two configurations: no gain is computed against either
    rows += [_row("student_pretrained_baseline", s, 0.80, lr=0.5) for s in range(3)]
    assert "no gain computed" in sweep.summary(rows)
    # one experiment whose teacher is a student of the same seed (born-again): not split
    gen2 = [_row("born_again_gen2", s, 0.85, lr=1.5, teacher_config=f"gen1-seed{s}") for s in range(3)]
    assert "born_again_gen2 " in sweep.summary(gen2) and "[" not in sweep.summary(gen2)


def test_a_student_is_compared_with_the_published_seeds_of_their_own_settings(tmp_path):
    from types import SimpleNamespace

    results, manifest = tmp_path / "sweep.jsonl", tmp_path / "manifest.json"
    config = {"run": "student_pretrained_kd_logits", "alpha": 0.5, "teacher_config": "t", "data_fingerprint": "d"}
    for seed in range(3):       # the recipe's seeds, a --set alpha=0.1 sweep and a grid, all in one file
        for alpha, extra in ((0.5, {}), (0.1, {}), (0.9, {"set_alpha": 0.9})):
            sweep.append_row(results, {"run": "student_pretrained_kd_logits", "seed": seed, "recipe": "cpu",
                                       "test_acc": round(0.8 + alpha / 10, 4), "n_test": 10000, "smoke": False,
                                       "config_hash": f"{alpha}-{seed}", **extra,
                                       "config": {**config, "alpha": alpha, "seed": seed}})
    assert main(["publish", "--sweep", str(results), "--manifest", str(manifest)]) == 0
    assert len(sweep.published_rows("cpu", manifest)) == 9
    mine = SimpleNamespace(name="student_pretrained_kd_logits", config={**config, "seed": 0})
    rows = sweep.published_rows("cpu", manifest, like=[mine])
    assert sorted(r["seed"] for r in rows) == [0, 1, 2] and {r["test_acc"] for r in rows} == {0.85}
    other_data = SimpleNamespace(name=mine.name, config={**mine.config, "data_fingerprint": "synthetic"})
    assert sweep.published_rows("cpu", manifest, like=[other_data]) == []


def test_plan_paths_are_absolute_and_its_merge_line_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ck"))      # a job does not inherit this
    script = tmp_path / "array.sh"
    assert main(["sweep", "--recipe", "cpu", "--seeds", "1", "--out", "rel/s.jsonl", "--slurm", str(script)]) == 0
    cells = [shlex.split(line.split(") ", 1)[1].rstrip(" ;")) for line in script.read_text().splitlines()
             if line.startswith("  ") and ") python" in line]
    assert len(cells) == 2
    for argv in cells:
        for flag in ("--out", "--ckpt-dir", "--data-dir"):
            assert argv[argv.index(flag) + 1].startswith("/"), (flag, argv)
        assert argv[argv.index("--ckpt-dir") + 1] == str(tmp_path / "ck")
    for i, argv in enumerate(cells):      # what the two array tasks would write
        sweep.append_row(Path(argv[argv.index("--out") + 1]),
                         {"run": argv[4], "seed": 0, "test_acc": 0.8, "config_hash": f"h{i}", "smoke": False})
    merge_line = next(line for line in script.read_text().splitlines() if "--merge" in line)
    argv = shlex.split(merge_line.lstrip("# "))
    assert argv[:4] == ["python", "-m", "kdtp", "sweep"]
    assert main(argv[3:]) == 0                            # the pattern reaches kdtp quoted: expanded there
    assert len(sweep.read_rows(tmp_path / "rel" / "s.jsonl")) == 2
    assert main(["sweep", "--merge", str(tmp_path / "none.*.jsonl"), "--out", "x.jsonl"]) == 2
    assert "no results file matches" in capsys.readouterr().err


def test_a_csv_out_is_a_tidy_table_over_the_full_record(tmp_path):
    import csv

    out = tmp_path / "res.csv"
    plan = sweep.SweepPlan(["student_pretrained_baseline", "student_pretrained_kd_logits"], [0, 1])
    kw = dict(recipe="fast", smoke=True, sets=TINY, out=out, ckpt_dir=tmp_path / "ck",
              data_dir=tmp_path / "data", workers=1, verbose=False, progress=False)
    rows = sweep.run_sweep(plan, **kw)
    sweep.run_sweep(plan, **kw)                                   # all loaded: appended to the record
    table = list(csv.DictReader(out.open()))
    assert len((tmp_path / "res.jsonl").read_text().splitlines()) == 8
    assert len(table) == 4                                        # one row per cell, not per sweep
    assert [(r["run"], int(r["seed"]), float(r["test_acc"])) for r in table] == \
        [(r["run"], r["seed"], r["test_acc"]) for r in rows]
    assert {r["smoke"] for r in table} == {"True"} and table[0]["config.arch"] == "cnn_tiny"
    assert {r["config.temperature"] for r in table if r["run"].endswith("kd_logits")} == {"4.0"}
    assert len(sweep.read_rows(out)) == 4                         # a table reads through its record
    merged = sweep.merge([out], tmp_path / "all.csv")
    assert len(merged) == 4 and len(list(csv.DictReader((tmp_path / "all.csv").open()))) == 4
    (tmp_path / "res.jsonl").unlink()
    with pytest.raises(ConfigError, match="full record"):
        sweep.read_rows(out)


@pytest.mark.parametrize("gpus, workers", [(2, None), (0, 2)])
def test_several_workers_split_the_cells_and_their_rows_merge(tmp_path, monkeypatch, capsys, gpus, workers):
    # two "GPUs" faked on a CPU machine (their workers run on the CPU), or two CPU workers asked for:
    # the teacher trained once before the workers start, the cells split between them, the files merged
    monkeypatch.setattr(sweep, "_gpu_count", lambda: gpus)
    out = tmp_path / "s.jsonl"
    plan = sweep.SweepPlan(["student_pretrained_baseline", "student_pretrained_kd_logits"], [0, 1])
    rows = sweep.run_sweep(plan, recipe="fast", smoke=True, sets=TINY, out=out, ckpt_dir=tmp_path / "ck",
                           data_dir=tmp_path / "data", workers=workers, progress=False)
    assert ("CPU workers" in capsys.readouterr().out) == (gpus == 0)
    assert sorted((r["run"], r["seed"]) for r in rows) == sorted((c.run, c.seed) for c in plan.cells())
    assert {p.name for p in tmp_path.glob("s.gpu*.jsonl")} == {"s.gpu0.jsonl", "s.gpu1.jsonl"}
    assert len(sweep.read_rows(tmp_path / "s.gpu0.jsonl")) == len(sweep.read_rows(tmp_path / "s.gpu1.jsonl")) == 2
    assert len(sweep.read_rows(out)) == 4
    assert len({r["config"]["teacher_config"] for r in rows if r["run"].endswith("kd_logits")}) == 1
    assert len(list((tmp_path / "ck").rglob("teacher_resnet50*_best.pt"))) == 1


def test_the_extra_pairs_are_forecast_from_the_lab_s_own_student(monkeypatch):
    from types import SimpleNamespace

    import torch

    from kdtp import env

    precision = env.pick_precision(torch.device("cpu"))
    ref = SimpleNamespace(name="student_pretrained_baseline", source="trained",
                          metrics={"train_seconds": 90.0, "device": "cpu", "precision": precision})
    text = sweep.time_forecast(ref, 8, torch.device("cpu"))
    assert "8 more trainings" in text and "about 12 min" in text and "SEEDS = [0]" in text
    assert "no extra training" in sweep.time_forecast(ref, 0, "cpu")
    elsewhere = SimpleNamespace(name=ref.name, source="trained", metrics={**ref.metrics, "device": "cuda"})
    assert "no time estimate" in sweep.time_forecast(elsewhere, 8, "cpu")
    published = SimpleNamespace(name=ref.name, source="downloaded", metrics=ref.metrics)
    assert "no time estimate" in sweep.time_forecast(published, 8, "cpu")
