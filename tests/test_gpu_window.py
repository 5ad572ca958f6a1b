"""The gpu preset (advmoe.gpupreset) and the one-call GPU window script (benchmarks/gpu_window.py), dry-run on the
CPU at the smoke preset: every phase runs and writes what it measured, the units are stored and bundled."""
import json
import os
import subprocess
import sys
import tarfile

import pytest

from advmoe import experiments as ex
from advmoe import gpupreset
from advmoe.data import REPO

SPEEDS = {"AT (Dense)": 4000.0, "AT (S-Dense)": 4000.0, "AT (MoE)": 1600.0, "AdvMoE": 800.0}
PGD20 = {"AT (Dense)": 1500.0, "AT (S-Dense)": 2800.0, "AT (MoE)": 1500.0, "AdvMoE": 1400.0}


def test_sizing_fits_the_slice_into_the_window_and_grows_with_speed():
    base = gpupreset.size(SPEEDS, PGD20, window_s=3600)
    epoch = sum(50_000 / SPEEDS[speed] for _, speed in gpupreset.STAGES)  # AT (Sparse): a Dense and an S-Dense stage
    assert base["seconds_per_seed_epoch"] == pytest.approx(epoch)
    per_epoch = base["seeds"] * (epoch + base["track_seconds_per_seed_epoch"])
    assert base["gpu_seconds"] <= 3600 < base["gpu_seconds"] + per_epoch  # the most epochs that fit
    faster = gpupreset.size({k: 3 * v for k, v in SPEEDS.items()}, PGD20, window_s=3600)
    shared = gpupreset.size(SPEEDS, PGD20, concurrency_gain=2.0, window_s=3600)
    assert faster["epochs"] > base["epochs"] and shared["epochs"] > base["epochs"]
    slow = gpupreset.size(SPEEDS, PGD20)  # the 10-minute window cannot hold one epoch of 4 seeds at these speeds
    assert slow["epochs"] == 1 and slow["windows"] > 1
    with pytest.raises(ValueError, match="AdvMoE"):
        gpupreset.size({k: v for k, v in SPEEDS.items() if k != "AdvMoE"}, PGD20)


def test_the_gpu_preset_is_the_papers_regime_with_the_stored_or_provisional_epochs(tmp_path, monkeypatch):
    gpupreset.sizing.cache_clear()
    monkeypatch.setattr(gpupreset, "SIZING", tmp_path / "gpu-preset.json")
    provisional = gpupreset.sizing()
    assert "provisional" in provisional["source"] and provisional["epochs"] >= 1
    specs = ex.table1("gpu")
    assert len(specs) == 5 * len(gpupreset.SEEDS) and {s.seed for s in specs} == set(gpupreset.SEEDS)
    spec = specs[0]
    assert (spec.base_width, spec.train_subset, spec.test_subset, spec.eval_steps, spec.train_steps) == (64, None, None,
                                                                                                         20, 2)
    assert ex.autoattack_settings("gpu") == ("standard", 1000)
    stored = gpupreset.write_sizing({**provisional, "epochs": 7})
    assert stored["epochs"] == 7 and ex.table1("gpu")[0].epochs == 7
    assert gpupreset.write_sizing({**provisional, "epochs": 3})["epochs"] == 7  # a stored sizing stays
    gpupreset.sizing.cache_clear()


@pytest.mark.cluster
def test_the_window_script_dry_run_measures_sizes_and_stores_units(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "ADVMOE_RESULTS": str(results), "ADVMOE_ALLOW_DIRTY": "1", "PYTHONPATH": str(REPO)}
    env.pop("ADVMOE_ACCEL", None)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_window.py"), "--out", str(out), "--dry-run",
                           "--minutes", "20"],  # the window's budget: generous, so a loaded CI machine stays inside it
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu-window.json").read_text())
    print(json.dumps({k: v for k, v in report.items() if k != "units_output"}, indent=1))  # shown if an assert fails
    print(report.get("units_output", ""))
    assert report["sync"] == {label: "ok" for label, *_ in ex.TABLE1}
    eager = report["configs"]["eager"]
    assert all(eager[m]["train_images_per_s"] > 0 and eager[m]["pgd20_images_per_s"] > 0 for m in SPEEDS)
    assert report["best_config"] == "eager" and set(report["concurrency"]) == {"1", "2"}
    ratios = report["ratios_per_trades_step"]
    assert ratios["AT (S-Dense) / AT (S-Dense)"] == 1 and ratios["AdvMoE / AT (S-Dense)"] == pytest.approx(
        2 * eager["AdvMoE"]["train_images_per_s"] / eager["AT (S-Dense)"]["train_images_per_s"])
    assert all(v > 0 for v in report["concurrency"].values()) and report["k"] in (1, 2)
    assert report["sizing"]["epochs"] >= 1
    names = {ex.row_spec("smoke", k, m, s, seed=0).name for label, k, m, s in ex.TABLE1
             if label in ("AT (S-Dense)", "AT (MoE)")}
    assert {n.rsplit("-", 1)[0] for n in report["units_stored"]} == names
    with tarfile.open(out / "gpu-results.tar.gz") as tar:
        stored = tar.getnames()
    assert sum(n.endswith("metrics.json") for n in stored) == 2 and sum("worst-case" in n for n in stored) == 2
    assert not any(n.endswith(".pt") for n in stored)
    metrics = json.loads(next(results.glob("smoke/*moe*/metrics.json")).read_text())
    assert metrics["provenance"]["accel"] == {"execution": "sparse", "compile": None, "channels_last": False,
                                              "bf16": False}


def test_the_tables_show_stored_gpu_units_beside_and_never_compute_the_missing(tmp_path, monkeypatch):
    from advmoe import data as datalib
    from advmoe.worstcase import worst_case_eval

    if not (datalib.data_dir() / "cifar10-jpeg").is_dir() and os.environ.get("CI") != "true":
        pytest.skip("the CIFAR-10 JPEG copy is not unpacked (advmoe fetch cifar10-jpeg); CI always has it")
    monkeypatch.setenv("ADVMOE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ADVMOE_ALLOW_DIRTY", "1")
    gpupreset.sizing.cache_clear()
    monkeypatch.setattr(gpupreset, "SIZING", tmp_path / "gpu-preset.json")
    assert "No result of the gpu preset is stored yet" in gpupreset.beside("1")["note"]
    # the gpu preset shrunk to seconds: its code paths, not its sizes
    monkeypatch.setattr(gpupreset, "settings", lambda: dict(dataset="cifar10-jpeg", base_width=8, epochs=1, batch_size=32,
                                                            train_subset=128, test_subset=32, eval_steps=2))
    real = ex.autoattack_settings
    monkeypatch.setattr(ex, "autoattack_settings", lambda p: ("apgd-ce", 8) if p == "gpu" else real(p))
    for seed in (0, 1):
        for label in ("AT (MoE)", "AdvMoE"):
            _, kind, method, scale = next(row for row in ex.TABLE1 if row[0] == label)
            worst_case_eval(ex.row_spec("gpu", kind, method, scale, seed=seed), progress=False)
    shown = gpupreset.beside("1")
    assert "4 of 20 gpu-preset models stored (seeds 0, 1)" in shown["note"]
    assert "AdvMoE vs AT (MoE): seed SD of the gap" in shown["note"]
    decided = [v for v in shown["verdicts"] if "gpu preset, 2 seeds" in v.detail]
    assert [v.claim for v in decided] == ["AdvMoE RA > AT (MoE) RA (resnet18, cifar10-jpeg)"]
    assert all("no results at this preset" in v.detail for v in shown["verdicts"] if v not in decided)
    stored = [p.name for p in (tmp_path / "results" / "gpu").iterdir()]
    assert len(stored) == 4 and all("-moe-n2-r0.5-" in n for n in stored)  # nothing else was trained for the page
    gpupreset.sizing.cache_clear()


def test_the_paper_speeds_come_from_the_newest_window_when_one_is_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(gpupreset, "WINDOW_REPORT", tmp_path / "gpu-window.json")
    old, source = gpupreset.paper_speeds()
    assert "paper-preset-gpu.json" in source and old["models"]["AT (MoE)"]["hours_per_seed"] > 0
    speeds = {m: {"train_images_per_s": 2 * v, "pgd20_images_per_s": PGD20[m]} for m, v in SPEEDS.items()}
    (tmp_path / "gpu-window.json").write_text(json.dumps({"device": "GPU X", "best_config": "graphs", "k": 4,
                                                          "concurrency_gain": 2.0, "configs": {"graphs": speeds}}))
    new, source = gpupreset.paper_speeds()
    assert "GPU X" in source and "4 trainings at once" in source
    moe = new["models"]["AT (MoE)"]
    assert moe["pgd50_images_per_s"] == pytest.approx(PGD20["AT (MoE)"] * 20 / 50)
    assert moe["hours_per_seed"] == pytest.approx((100 * 50_000 / 3200 + 10_000 / moe["pgd50_images_per_s"]) / 3600 / 2)


def test_the_gpu_preset_has_no_book_or_chapters_of_its_own(capsys):
    from advmoe import dual, robust
    from advmoe.cli import main

    assert main(["book", "--preset", "gpu"]) == 2
    from advmoe import report as R
    with pytest.raises(ValueError, match="the gpu preset has no pages of its own"):
        R.check_params("gpu", "cpu", False)
    assert "its stored units show on the Table 1 and Table 2 pages of the cpu book" in capsys.readouterr().err
    for chapter, name in ((dual, "dual-model"), (robust, "Robust Experts")):
        with pytest.raises(ValueError, match=f"the {name} chapter has no preset 'gpu'; allowed: smoke, cpu, paper"):
            chapter.settings("gpu")
