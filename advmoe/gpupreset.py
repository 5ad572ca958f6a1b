"""The gpu preset: the paper's regime in one short GPU window (issue 22).

ResNet-18 at the paper's width (64), all 50,000 training images (the JPEG copy; `--set dataset=cifar10` where the
official files are), batch 128, TRADES with the paper's 2-step training PGD, RA by PGD-20 on all 10,000 test images,
AutoAttack (standard) and the worst case on a fixed, class-balanced 1,000 of them. Only the schedule is compressed:
E epochs of the cosine schedule instead of 100. E is sized so that the Table-1 slice (AT (Dense), AT (S-Dense),
AT (Sparse), AT (MoE), AdvMoE) with `SEEDS` trains and is evaluated in one GPU window of `WINDOW_S` seconds
(`size`), from the throughput measured on the GPU: benchmarks/gpu_window.py measures it and writes
results/bench/gpu-preset.json the first time; later windows reuse that file, since E is part of every result's
hash. Before any such measurement, E comes from the eager speeds measured on an H100 with the earlier layer
(results/bench/paper-preset-gpu.json), and `sizing()` says so.

Seeds: 4. With the paired test-set SE of 10,000 images (about 0.25 pp on RA gaps), the verdict rule's threshold,
t(k - 1) x SE, is at most 2 pp for a seed SD of the gap up to about 1.2 pp with 4 seeds (0.7 pp with 3). The seed
spread at this preset is unknown until its first seeds are stored; `benchmarks/gpu_window.py` reports it and the
seeds it would take (`report.seeds_needed`).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from . import data as datalib

WINDOW_S = 600  # one GPU window: about 10 minutes of computing
SEEDS = (0, 1, 2, 3)
N_TRAIN, N_TEST, N_AA = 50_000, 10_000, 1_000
EVAL_STEPS = 20
TRACK = (1_000, 10)  # the RA tracked after every epoch: PGD-10 on 1,000 test images (`train.trajectory_settings`)
# AutoAttack standard plus the worst case, in PGD-20 image-equivalents per image attacked: APGD-CE (100 iterations),
# APGD-T and FAB-T (9 targets x 100) and Square (5,000 queries, forward only) on the images still robust (about half
# at this preset), about 110 PGD-20 passes per image. An estimate, stated as one in the sizing.
AA_PGD20_EQUIVALENTS = 110
# What one seed of the Table-1 slice trains: (stage, the speed it runs at). AT (Sparse) is HYDRA's chain over AT
# (Dense): a mask stage at Dense's width, then fine-tuning of the compact (S-Dense) network.
STAGES = (("AT (Dense)", "AT (Dense)"), ("AT (S-Dense)", "AT (S-Dense)"), ("AT (Sparse), mask", "AT (Dense)"),
          ("AT (Sparse), fine-tuning", "AT (S-Dense)"), ("AT (MoE)", "AT (MoE)"), ("AdvMoE", "AdvMoE"))
MODELS = ("AT (Dense)", "AT (S-Dense)", "AT (Sparse)", "AT (MoE)", "AdvMoE")  # what is evaluated
SIZING = datalib.REPO / "results" / "bench" / "gpu-preset.json"
FALLBACK = datalib.REPO / "results" / "bench" / "paper-preset-gpu.json"


def size(train_ips: dict[str, float], eval_ips: dict[str, float], concurrency_gain: float = 1.0,
         window_s: float = WINDOW_S, seeds: int = len(SEEDS)) -> dict:
    """E and the window's budget from measured speeds: train_ips, training images per second of one training at
    batch 128 per Table-1 label (AT (Dense), AT (S-Dense), AT (MoE), AdvMoE: a full iteration, AdvMoE's two steps);
    eval_ips, PGD-20 images per second per label; concurrency_gain, the aggregate speed of K trainings sharing the
    GPU over one's. E = the most epochs with which SEEDS seeds of the slice, trained and evaluated, fit in one window
    (at least 1: then `windows` says how many it takes)."""
    missing = [k for k in ("AT (Dense)", "AT (S-Dense)", "AT (MoE)", "AdvMoE") if k not in train_ips or k not in eval_ips]
    if missing:
        raise ValueError(f"size needs training and PGD-20 speeds of {', '.join(missing)}")
    if concurrency_gain <= 0 or window_s <= 0 or seeds < 1:
        raise ValueError("concurrency_gain, window_s and seeds must be > 0")
    epoch_s = sum(N_TRAIN / train_ips[speed] for _, speed in STAGES)  # one epoch of every stage, one seed
    pgd20 = {label: eval_ips.get(label, eval_ips["AT (Dense)" if label == "AT (Sparse)" else label])
             for label in MODELS}
    # per model: clean SA + RA at eps 0 (1 step), eps / 2 and eps (20 steps each) on the test set, then AutoAttack and
    # the worst case on N_AA; per epoch, the tracked RA
    eval_s = sum((42 / EVAL_STEPS * N_TEST + AA_PGD20_EQUIVALENTS * N_AA) / pgd20[m] for m in MODELS)
    track_s = sum(TRACK[0] * TRACK[1] / EVAL_STEPS / pgd20[m] for m in MODELS)
    budget = window_s * concurrency_gain - seeds * eval_s
    epochs = max(1, math.floor(budget / (seeds * (epoch_s + track_s)))) if budget > 0 else 1
    gpu_s = seeds * (epochs * (epoch_s + track_s) + eval_s) / concurrency_gain
    return {"epochs": epochs, "seeds": seeds, "window_s": window_s, "concurrency_gain": concurrency_gain,
            "seconds_per_seed_epoch": epoch_s, "track_seconds_per_seed_epoch": track_s,
            "eval_seconds_per_seed": eval_s, "gpu_seconds": gpu_s,
            "windows": gpu_s / window_s, "aa_estimate": f"{AA_PGD20_EQUIVALENTS} PGD-20 passes per image"}


@functools.lru_cache(maxsize=1)
def sizing() -> dict:
    """The stored sizing (results/bench/gpu-preset.json), else one from the H100's eager speeds (`FALLBACK`)."""
    if SIZING.is_file():
        return {**json.loads(SIZING.read_text()), "source": SIZING.name}
    measured = json.loads(FALLBACK.read_text())["models"]
    train = {k: v["train_images_per_s"] for k, v in measured.items()}
    pgd20 = {k: v["pgd50_images_per_s"] * 50 / EVAL_STEPS for k, v in measured.items()}
    return {**size(train, pgd20), "source": f"{FALLBACK.name} (eager, H100, before issue 22: provisional until "
                                            f"benchmarks/gpu_window.py measures)"}


def settings() -> dict:
    """The fields the gpu preset sets (everything else keeps the paper's value)."""
    return dict(dataset="cifar10-jpeg", base_width=64, epochs=sizing()["epochs"], batch_size=128, train_subset=None,
                test_subset=None, eval_steps=EVAL_STEPS)


def write_sizing(result: dict, path: Path | None = None) -> dict:
    """Store a measured sizing (at `SIZING`), unless one is stored already (E is in every gpu result's hash: it
    stays)."""
    from .io import atomic_write_json

    path = path or SIZING
    if not path.is_file():
        atomic_write_json(result, path)
    sizing.cache_clear()
    return json.loads(path.read_text())


def beside(table: str = "1", device: str = "cpu") -> dict:
    """What the Table 1 (or 2) page shows of the gpu preset beside its own preset's: the stored records (a page
    never computes them: a unit is stored whole, training with AutoAttack and the worst case, or not at all), their
    table and verdicts, and a paragraph: the design, what is stored, the seed spread measured on it and the seeds a
    2 pp threshold would take; with nothing stored, the command that computes it."""
    from . import experiments as ex
    from . import report as R

    records = R.with_autoattack([rec for d, b in R.cells("gpu", table) if R.runnable(d, b, "gpu") is None
                                 for rec in R.collect(ex.TABLE1, "gpu", device, False, d, b, stored_only=True)],
                                device, False, stored_only=True)
    done = [r for r in records if r["metrics"] is not None]
    s = sizing()
    design = (f"The gpu preset is the paper's regime (width 64, all 50,000 training images, PGD-{EVAL_STEPS} on all "
              f"10,000 test images, AutoAttack and the worst case on {N_AA:,}) with the schedule compressed to "
              f"{s['epochs']} epoch{'s' if s['epochs'] > 1 else ''}, sized from GPU throughput ({s['source']}).")
    if not done:
        return {"records": records, "verdicts": [], "table": None, "note": (
            f"No result of the gpu preset is stored yet. {design} One GPU call computes what fits in its window "
            f"(`python benchmarks/gpu_window.py --out DIR`); by this sizing the slice with {len(SEEDS)} seeds takes "
            f"about {s['windows']:.1f} windows of {WINDOW_S // 60} minutes.")}
    metric = "ra" if table == "1" else "ra_aa"
    spread = []
    for a, b in R.COMPARISONS[table]:
        pairs = [(x, y) for x in done if x["label"] == a for y in done if y["label"] == b and y["seed"] == x["seed"]]
        if len(pairs) >= 2:
            side_a, side_b = [x["metrics"] for x, _ in pairs], [y["metrics"] for _, y in pairs]
            gaps = [100 * (x["final"][metric] - y["final"][metric]) for x, y in zip(side_a, side_b)]
            sd = R._mean_std(gaps)[1]
            se = R.test_set_se(side_a, side_b, metric)[0]
            needed = R.seeds_needed(sd, se, 2.0)
            spread.append(f"{a} vs {b}: seed SD of the gap {sd:.2f} pp over {len(gaps)} seeds, a 2 pp threshold takes "
                          f"{needed or 'more than 100'} seeds")
    seeds = sorted({r["seed"] for r in done})
    note = (f"{len(done)} of {len(records)} gpu-preset models stored (seeds {', '.join(map(str, seeds))}). {design} "
            + ("Measured seed spread: " + "; ".join(spread) + "." if spread else
               "The seed spread needs two seeds of a comparison; none has them yet."))
    metrics = ("ra_worst", "ra", "sa") if table == "1" else ("ra_worst", "ra_aa", "ra_pgd_aa_examples", "sa")
    df = R.summary(records, metrics=metrics, table=table)
    return {"records": records, "verdicts": R.comparison_verdicts(records, "gpu", table),
            "table": R.display_table(df[df.seeds > 0], metrics=metrics), "note": note}


WINDOW_REPORT = datalib.REPO / "results" / "bench" / "gpu-window.json"  # benchmarks/gpu_window.py's measurements


def paper_speeds() -> tuple[dict, str]:
    """The paper preset's speeds per Table-1 model, as benchmarks/paper_preset_gpu.py writes them (training and
    PGD-50 images/s, GPU hours per seed: 100 epochs x 50,000 images and PGD-50 on 10,000), and where they come from:
    the newest GPU window's fastest configuration (`WINDOW_REPORT`: its per-training speeds; K trainings sharing the
    GPU divide the hours by their measured gain) when one is stored, else the eager H100 timing (`FALLBACK`)."""
    if not WINDOW_REPORT.is_file():
        return json.loads(FALLBACK.read_text()), f"{FALLBACK.name} (eager, NVIDIA H100, before issue 22)"
    window = json.loads(WINDOW_REPORT.read_text())
    config, gain = window["best_config"], window.get("concurrency_gain") or 1.0
    models = {}
    for label, speed in window["configs"][config].items():
        pgd50 = speed["pgd20_images_per_s"] * EVAL_STEPS / 50
        hours = (100 * N_TRAIN / speed["train_images_per_s"] + N_TEST / pgd50) / 3600 / gain
        models[label] = {"train_images_per_s": speed["train_images_per_s"], "pgd50_images_per_s": pgd50,
                         "hours_per_seed": hours}
    return ({"device": window["device"], "models": models},
            f"{WINDOW_REPORT.name} ({window['device']}, configuration {config!r}, {window.get('k', 1)} trainings at "
            f"once: {gain:.2f}x the GPU's throughput of one)")
