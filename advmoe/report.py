"""What the book's notebooks call: results beside the paper's numbers, figures, computed verdicts.

Notebooks stay thin: a parameters cell, a call here, a table, a figure, glue, and the verdict that
`verdict()` computes from the numbers (never typed by hand).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import cells as cells_
from . import data as datalib
from . import experiments as ex
from . import paper
from .data import REPO
from .io import atomic_write_json
from .models import BACKBONES

# Table 1's (dataset, backbone) cells as the paper lays them out (`advmoe.cells`); Table 2's AutoAttack has four.
PAPER_CELLS = list(cells_.PAPER_CELLS)
TABLE2_CELLS = [(d, b) for d in ("cifar10", "cifar100") for b in ("resnet18", "wrn28-10")]
FIG1B = cells_.FIG1B_ST + tuple(r for r in ex.TABLE1 if r[0] != "AT (Sparse)")  # as the paper


IPYTHON_NAMES = {"In", "Out"}  # plain-valued names IPython itself puts in a notebook's namespace


def check_params(preset: str, device: str, recompute: bool, names: dict | None = None, **lists) -> None:
    """Validate a notebook's parameters before any compute; raises ValueError with one line saying what is allowed.

    names: the notebook's globals(); any other plain-valued name there is a parameter papermill injected
    that this notebook does not take (papermill itself only warns about those).
    """
    allowed = {"preset", "device", "recompute", *lists}
    if names is not None:
        unknown = sorted(k for k, v in names.items() if not k.startswith("_") and k not in allowed | IPYTHON_NAMES
                         and isinstance(v, (str, int, float, bool, list, tuple, dict, type(None))))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this notebook takes: {', '.join(sorted(allowed))}")
    if preset == "gpu":
        raise ValueError("the gpu preset has no pages of its own: its stored units show on the Table 1 and Table 2 "
                         "pages executed at the cpu preset (advmoe.gpupreset)")
    if not isinstance(preset, str) or preset not in ex.BOOK_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(ex.BOOK_PRESETS)}, got {preset!r}")
    if not isinstance(device, str):
        raise ValueError(f"device must be a string (cpu, cuda, cuda:N, auto), got {device!r}")
    ex.resolve_device(device)
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute must be True or False, got {recompute!r}")
    for name, values in lists.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{name} must be a non-empty list, got {values!r}")
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        if name.startswith("eps") and not all(number(v) and 0 <= v <= 255 for v in values):
            raise ValueError(f"{name} must hold numbers in [0, 255] (eps in units of 1/255), got {values!r}")
        if name.startswith("scale") and not all(number(v) and 0 < v <= 1 for v in values):
            raise ValueError(f"{name} must hold model scales r in (0, 1], got {values!r}")
        if name.startswith("experts") and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                  for v in values):
            raise ValueError(f"{name} must hold expert numbers N, integers >= 1, got {values!r}")


def cells(preset: str, table: str = "1") -> list[tuple[str, str]]:
    """The (dataset, backbone) cells of Table 1 (or 2), every one at every preset, the dataset as the preset names
    it (the cpu and smoke presets read the JPEG copy of CIFAR-10); `runnable` says which the preset computes."""
    return [(d if preset == "paper" else cells_.CPU_DATASET.get(d, d), b)
            for d, b in (PAPER_CELLS if table == "1" else TABLE2_CELLS)]


def runnable(dataset: str, backbone: str, preset: str) -> str | None:
    """None if the preset computes the cell, else why not and the one command that computes it."""
    paper_dataset = dataset.replace("cifar10-jpeg", "cifar10")
    if preset == "gpu":
        return None if (paper_dataset, backbone) == cells_.GPU_CELL else (
            f"not at the gpu preset (ResNet-18 on CIFAR-10 only); on a GPU: `advmoe run --preset paper --dataset "
            f"{paper_dataset} --backbone {backbone} --device cuda`")
    if preset == "paper" or (paper_dataset, backbone) in cells_.BOOK:
        return None
    if (paper_dataset, backbone) in cells_.CPU:
        return (f"sized for the {preset} preset, computed in units, not stored yet: `python benchmarks/units.py cells "
                f"--preset {preset}`")
    where = "no data on this machine" if paper_dataset in ("cifar100", "imagenet") else "not sized for a CPU"
    return (f"not at the {preset} preset ({where}); on a GPU: `advmoe run --preset paper --dataset {paper_dataset} "
            f"--backbone {backbone} --device cuda`")


def cell_spec(preset: str, kind: str, method: str, scale: float, dataset: str, backbone: str, **overrides):
    """A Table-1 row's spec in a cell, with the cell's settings at the preset (`advmoe.cells.settings`)."""
    settings = cells_.settings(preset, dataset.replace("cifar10-jpeg", "cifar10"), backbone)
    return ex.row_spec(preset, kind, method, scale, **{**settings, **overrides})


def page_specs(preset: str, seeds: tuple[int, ...] | None = None, **overrides) -> list:
    """Every experiment the book's pages show at a preset (runnable cells only): Table 1 and Fig. 1b rows,
    for the preset's seeds or the given ones; overrides: spec fields to change in all of them (and their parents)."""
    rows = {r[1:] for r in ex.TABLE1}
    return [cell_spec(preset, kind, method, scale, d, b, **{"seed": seed, **overrides})
            for d, b in cells(preset) if runnable(d, b, preset) is None
            for kind, method, scale in sorted(rows | ({r[1:] for r in FIG1B} if d.startswith("cifar10") else set()))
            for seed in (cells_.cell_seeds(preset, d, b) if seeds is None else seeds)]


def label(spec) -> str:
    """The table label of a page model ("AT (Sparse)", "ST (MoE)", ...), else its name."""
    labels = {(kind, method, scale): lbl for lbl, kind, method, scale in ex.TABLE1 + FIG1B}
    return labels.get((spec.kind, spec.method, spec.scale), spec.name)


def audit_specs(preset: str) -> list:
    """The models the robustness audit checks: each page model's first seed. The audit tests the evaluation (are
    the attacks strong enough for this kind of model?), not the training noise; the worst-case RA, which the
    tables lead with, is computed for every seed."""
    return page_specs(preset, ex.preset_seeds(preset)[:1])


def collect(rows, preset: str, device: str, recompute: bool, dataset: str, backbone: str,
            seeds: tuple[int, ...] | None = None, stored_only: bool = False, **overrides) -> list[dict]:
    """One record per (row, seed): our metrics (None where not runnable) and the row's identity. overrides: spec
    fields every row shares (e.g. Table A1's 10-step training attack, `ex.train_attack(10)`). stored_only: never
    compute (None where nothing is stored; a GPU preset read on a CPU)."""
    records = []
    why = runnable(dataset, backbone, preset)
    for label, kind, method, scale in rows:
        for seed in cells_.cell_seeds(preset, dataset, backbone) if seeds is None else seeds:
            rec = dict(dataset=dataset, backbone=backbone, label=label, kind=kind, method=method, scale=scale,
                       seed=seed, metrics=None, why=why)
            if why is None:
                spec = cell_spec(preset, kind, method, scale, dataset, backbone, seed=seed, **overrides)
                rec["metrics"], rec["spec"] = (_stored(spec) if stored_only else
                                               ex.get(spec, device, recompute=recompute, progress=False)), spec
            records.append(rec)
    return records


def _stored(spec) -> dict | None:
    try:
        return ex.load(spec)
    except FileNotFoundError:
        return None


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


@functools.lru_cache(maxsize=None)
def paper_width_gflops(backbone: str, kind: str, scale: float, dataset: str = "cifar10") -> float:
    """Our analytic GFLOPs for the model at the paper's widths (our presets may shrink the base width), on the
    dataset's images, classes and stem."""
    from .flops import gflops
    from .models import create_model

    spec = cells_.specs("paper", dataset.replace("cifar10-jpeg", "cifar10"), backbone, seeds=(0,))[0]
    side = datalib.IMAGE_SIZE[spec.dataset]
    return gflops(create_model(backbone, kind, scale, num_classes=spec.num_classes, stem=spec.stem), (3, side, side))


def summary(records: list[dict], metrics=("ra", "sa"), table: str = "1"):
    """A DataFrame: one row per method and cell, ours (mean, std over seeds, in %) beside the paper's."""
    import pandas as pd

    out, dense_gflops = [], {}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["backbone"], r["label"], r["kind"], r["method"], r["scale"]), []).append(r)
    for (d, b, label, kind, method, scale), recs in groups.items():
        row = dict(dataset=d, backbone=b, method=label, scale=scale)
        done = [r["metrics"] for r in recs if r["metrics"] is not None]
        pid = paper.method_id(kind, method)
        for metric in metrics:
            if done:
                m, s = _mean_std([100 * x["final"][metric] for x in done])
                row[f"{metric}_ours"], row[f"{metric}_ours_std"] = m, s
            p = paper.value(d, b, pid, scale, metric, table)
            row[f"{metric}_paper"], row[f"{metric}_paper_std"] = p if p else (None, None)
        row["gflops_ours"] = done[0]["final"]["gflops"] if done else None
        # the architecture's count: for every backbone we build, whether or not this preset trains the row
        row["gflops_ours_paper_width"] = paper_width_gflops(b, kind, scale, d) if b in BACKBONES else None
        p = paper.value(d, b, pid, scale, "gflops", table) or paper.value(d, b, pid, scale, "gflops", "1")
        row["gflops_paper"] = p[0] if p else None
        row["seeds"] = len(done)
        row["n_test"] = done[0]["final"]["n_test"] if done else None
        row["audit"] = audit_badge([r["spec"] for r in recs if r["metrics"] is not None])
        row["note"] = recs[0]["why"] or ""
        if kind == "dense":
            dense_gflops[(d, b)] = row["gflops_ours"]
        out.append(row)
    df = pd.DataFrame(out)
    df["gflops_reduction_ours"] = [
        (1 - g / dense_gflops[(d, b)]) if g and dense_gflops.get((d, b)) else None
        for d, b, g in zip(df.dataset, df.backbone, df.gflops_ours)]
    return df


def with_autoattack(records: list[dict], device: str, recompute: bool, stored_only: bool = False) -> list[dict]:
    """The records with RA-AA and the worst case over every attack (`advmoe.worstcase`) added to each model's
    final metrics, with RA-PGD on the same examples and the per-example results (for paired verdicts).
    stored_only: never compute; a model whose AutoAttack or worst case is not stored counts as not stored (its
    unit is whole or absent)."""
    from .worstcase import stored_worst_case, worst_case_eval

    out = []
    for r in records:
        if r["metrics"] is not None and stored_only:
            wc, aa = stored_worst_case(r["spec"]), ex.stored_autoattack(r["spec"])
            if wc is None or aa is None:
                r = {**r, "metrics": None}
        if r["metrics"] is not None:
            if not stored_only:
                wc = worst_case_eval(r["spec"], device, recompute=recompute, progress=False)
                aa = ex.autoattack_eval(r["spec"], device, progress=False)
            n = aa["n"]
            final = {**r["metrics"]["final"], "ra_aa": aa["ra_aa"], "ra_pgd_aa_examples": aa["ra_pgd_same_examples"],
                     "ra_worst": wc["ra_worst"], "n_ra_aa": n, "n_ra_pgd_aa_examples": n, "n_ra_worst": n,
                     "aa_version": aa["version"], "aa_seconds": aa["seconds"], "aa_warnings": aa.get("warnings", []),
                     "worst_case": {k: wc[k] for k in ("order", "ra_after_each", "broken_by_each", "expert_clean_accuracy")},
                     "correct": {**r["metrics"]["final"].get("correct", {}), "aa": aa["correct"],
                                 "pgd_aa_examples": aa["correct_pgd"], "worst": wc["correct_worst"]}}
            r = {**r, "metrics": {**r["metrics"], "final": final}}
        out.append(r)
    return out


def audit_badge(specs: list) -> str:
    """One line for a table row: which audit checks its model fails (the audit runs on the first seed,
    `audit_specs`), and on which seeds AutoAttack warned that its own evaluation may be unreliable."""
    from . import audit

    first = [s for s in specs if s.seed == ex.preset_seeds(s.preset)[0]]
    if not first:
        return "-"
    results = [audit.stored(s) for s in first]
    if any(r is None for r in results):
        return "not audited"
    bad = sorted({letter for r in results for letter in audit.failed(r)})
    warned = sorted({s.seed for s in specs if (aa := ex.stored_autoattack(s)) and aa.get("warnings")})
    said = "⚠ fails " + ", ".join(f"({b})" for b in bad) if bad else "⚠ passes" if warned else "passes all checks"
    if warned:
        said += f"; AutoAttack warned (seed{'s' if len(warned) > 1 else ''} {', '.join(map(str, warned))})"
    return said


def audit_note(df) -> str:
    """One line under a table: the rows the audit flags (`audit_badge`) and what a flag means for their numbers."""
    failed = [f"{m} {a}" for m, a in zip(df.method, df.audit) if a.startswith("⚠ fails")]
    warned = [f"{m} {a}" for m, a in zip(df.method, df.audit) if a.startswith("⚠ passes")]
    if not failed and not warned:
        return "Every model on this page passes the robustness audit, and AutoAttack raised no warning on any."
    said = []
    if failed:
        said.append(f"Audit failures: {'; '.join(failed)}. Their PGD robust accuracy overstates their robustness.")
    if warned:
        said.append(f"AutoAttack warned that its own evaluation may be unreliable for: {'; '.join(warned)}. Their PGD "
                    f"robust accuracy may overstate their robustness; the RA worst case counts every image any attack "
                    f"broke.")
    return " ".join(said) + " See the robustness audit and Table 2 (AutoAttack)."


def fmt(mean, std=None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and not math.isnan(std) else "")


def beside(ours, ours_std, paper_mean, digits: int = 1) -> str:
    """One compact cell: "23.8 ± 1.2 (50.1)", ours (mean ± std over seeds) with the paper's number in brackets."""
    text = fmt(ours, ours_std, digits)
    if paper_mean is not None and not (isinstance(paper_mean, float) and math.isnan(paper_mean)):
        text += f" ({paper_mean:.{max(digits, 2) if paper_mean < 1 else digits}f})"
    return text


METRIC_NAMES = {"ra": "RA-PGD", "sa": "SA", "ra_aa": "RA-AA", "ra_pgd_aa_examples": "RA-PGD on AA images",
                "ra_worst": "RA worst case"}


def display_table(df, metrics=("ra", "sa")):
    """The table as a reader sees it: one column per metric holding "ours (paper)", no index, narrow enough
    for the page. Returns a pandas Styler (renders as HTML without the index)."""
    import pandas as pd

    shown = pd.DataFrame({"method": df.method})
    cells = {f"{d} / {b}" for d, b in zip(df.dataset, df.backbone)}
    if len(cells) > 1:
        shown.insert(0, "cell", [f"{b} / {d}" for d, b in zip(df.dataset, df.backbone)])
    if df.scale.nunique() > 1:
        shown["r"] = df.scale.map(lambda r: f"{r:g}")
    for metric in metrics:
        ours = df[f"{metric}_ours"] if f"{metric}_ours" in df else [None] * len(df)
        stds = df[f"{metric}_ours_std"] if f"{metric}_ours_std" in df else [None] * len(df)
        shown[f"{METRIC_NAMES[metric]} % (paper)"] = [beside(m, s, p) for m, s, p in zip(ours, stds, df[f"{metric}_paper"])]
    shown["GFLOPs (paper)"] = [beside(g, None, p, 3) for g, p in zip(df.gflops_ours_paper_width, df.gflops_paper)]
    dense = {(d, b): g for d, b, g, m in zip(df.dataset, df.backbone, df.gflops_ours_paper_width, df.method)
             if m.endswith("(Dense)")}
    shown["cut"] = [f"{100 * (1 - g / dense[(d, b)]):.0f}%" if pd.notna(g) and pd.notna(dense.get((d, b))) else "-"
                    for d, b, g in zip(df.dataset, df.backbone, df.gflops_ours_paper_width)]
    shown["audit"] = df.audit
    if (df.note != "").any():
        shown["note"] = df.note
    return shown.style.hide(axis="index")


def cell_grid(df, metric: str, caption: str = ""):
    """Every cell of Table 1 in the paper's layout: a row per cell, a column per method, "ours (paper)" in each
    (RA-PGD or SA: ours where this preset computed the cell, "-" elsewhere; "gflops": our count at the paper's
    widths, for every cell). Returns a pandas Styler without the index, captioned."""
    import pandas as pd

    methods = list(dict.fromkeys(df.method))
    rows = []
    for (d, b), sub in df.groupby(["dataset", "backbone"], sort=False):
        row = {"cell": f"{b} / {d}"}
        for m in methods:
            r = sub[sub.method == m]
            if r.empty:
                continue
            r = r.iloc[0]
            row[m] = (beside(r.gflops_ours_paper_width, None, r.gflops_paper, 3) if metric == "gflops" else
                      beside(r[f"{metric}_ours"] if f"{metric}_ours" in r and r.seeds else None,
                             r.get(f"{metric}_ours_std") if r.seeds > 1 else None, r[f"{metric}_paper"]))
        rows.append(row)
    return pd.DataFrame(rows).fillna("-").style.hide(axis="index").set_caption(caption)


def uncomputed_cells(preset: str, table: str = "1") -> str:
    """Markdown: each cell this preset does not compute, why, and the one command that computes it."""
    lines = [f"- **{b} / {d.replace('cifar10-jpeg', 'cifar10')}**: {why}" for d, b in cells(preset, table)
             if (why := runnable(d, b, preset))]
    return "\n".join(lines) or "Every cell is computed at this preset."


@dataclass
class Verdict:
    claim: str
    status: str  # reproduced / not reproduced / inconclusive / not run
    gap: float | None  # percentage points, claimed direction positive
    se: float | None  # standard error of the gap (pp)
    detail: str
    threshold: float | None = None  # the smallest gap this comparison can decide: t quantile x SE (pp)
    also: str | None = None  # the same claim judged under a second metric, e.g. "RA worst case: inconclusive"
    unit: str = "pp"  # of gap, se and threshold: percentage points unless the metric is not a share
    gap_name: str = "gap"  # what `gap` measures, for the summary line ("change" for a plateau)
    values: list[float] | None = None  # our two compared numbers, A and B (means over seeds; % where unit is pp)

    def __str__(self) -> str:
        return f"{self.claim}: {self.status} ({self.detail})"


# Student's t, two-sided 95% (the 97.5% quantile), by degrees of freedom (seeds - 1); normal beyond 10.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
CORRECT_KEY = {"ra": "pgd", "sa": "clean", "ra_aa": "aa", "ra_worst": "worst", "ra_pgd_aa_examples": "pgd_aa_examples"}
# (metric -> its per-example record in final["correct"])


def t975(df: int) -> float:
    return T975.get(df, 1.96)


def test_set_se(a: list[dict], b: list[dict], metric: str, scale: float = 100) -> tuple[float, int, bool]:
    """(standard error, in pp (x scale), of the seed-averaged gap due to which test images were drawn, n, paired?).

    Paired when both models stored per-image results on the same images (final["correct"][key]: a 0/1 string, or
    a list of per-image values whose mean is the metric): D_i = a_i - b_i averaged over seeds, SE = sd(D) /
    sqrt(n) (McNemar's logic: images both models get right or wrong add no noise). Otherwise the two accuracies
    are treated as independent binomials.
    """
    key = CORRECT_KEY.get(metric, metric)
    bits_a = [x["final"].get("correct", {}).get(key) for x in a]
    bits_b = [x["final"].get("correct", {}).get(key) for x in b]
    n = a[0]["final"].get(f"n_{metric}", a[0]["final"]["n_test"])  # e.g. RA-AA runs on a subset: n_ra_aa
    if all(bits_a + bits_b) and len({len(x) for x in bits_a + bits_b}) == 1:
        n = len(bits_a[0])
        d = [sum(float(x[i]) - float(y[i]) for x, y in zip(bits_a, bits_b)) / len(bits_a) for i in range(n)]
        mean = sum(d) / n
        return scale * math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n), n, True
    pa = sum(x["final"][metric] for x in a) / len(a)
    pb = sum(x["final"][metric] for x in b) / len(b)
    return 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / (n * len(a))), n, False


def threshold(seed_sd: float, test_se: float, seeds: int) -> float:
    """The smallest gap (pp) the verdict rule decides with `seeds` seeds, for a given seed SD and test-set SE."""
    return t975(seeds - 1) * math.sqrt(seed_sd ** 2 / seeds + test_se ** 2)


def seeds_needed(seed_sd: float, test_se: float, target: float, most: int = 100) -> int | None:
    """The fewest seeds (>= 2) whose threshold is at most `target` pp; None if even `most` do not reach it."""
    return next((k for k in range(2, most + 1) if threshold(seed_sd, test_se, k) <= target), None)


def per_image(values, n: int | None = None) -> dict:
    """A metrics-like dict `verdict` reads as metric "v": the mean of per-image values (a 0/1 string, or numbers),
    with the values themselves for the paired test-set SE. For measures that are not a model's stored metric."""
    if isinstance(values, str):
        return {"final": {"v": values.count("1") / len(values), "n_test": len(values), "correct": {"v": values}}}
    values = [float(v) for v in values]
    return {"final": {"v": sum(values) / len(values), "n_test": n or len(values), "correct": {"v": values}}}


def verdict(claim: str, a: list[dict], b: list[dict], metric: str = "ra", preset: str = "",
            also: str | None = None, scale: float = 100, unit: str = "pp") -> Verdict:
    """Is metric(a) > metric(b)? a, b: metrics dicts paired by seed (same seed, same test images).

    The gap is the mean over seeds of the paired per-seed gaps. Its standard error has two parts: the seed
    spread of those gaps (SD / sqrt(k)) and the test-set sampling of the images (`test_set_se`, paired
    where per-image results are stored). Reproduced if gap > t(k-1) x SE, not reproduced if gap < -t(k-1) x
    SE (Student's t for k seeds, two-sided 95%), else inconclusive. With one seed the seed spread is unknown
    and no claim is decided: inconclusive, whatever the gap. also: a second metric (e.g. "ra_worst") whose
    verdict is added to the detail: does the claim still hold under it? scale, unit: how the metric's values
    are shown (shares as percentage points by default; e.g. 1, "bits" for an entropy).
    """
    if also is not None and a and b:
        main, other = verdict(claim, a, b, metric, preset), verdict(claim, a, b, also, preset)
        main.detail += f"; under the {METRIC_NAMES.get(also, also)}: {other.status} (gap {other.gap:+.2f} pp)"
        main.also = f"{METRIC_NAMES.get(also, also)}: {other.status}"
        return main
    if not a or not b:
        return Verdict(claim, "not run", None, None, "no results at this preset")
    gaps = [scale * (x["final"][metric] - y["final"][metric]) for x, y in zip(a, b)]
    values = [scale * sum(x["final"][metric] for x in side) / len(side) for side in (a, b)]
    k = len(gaps)
    gap, sd = _mean_std(gaps)
    se_test, n, paired = test_set_se(a, b, metric, scale)
    where = f"{preset} preset, {k} seed{'s' if k > 1 else ''}, {n} test images"
    test_part = f"{'paired ' if paired else ''}test-set SE {se_test:.2f}"
    if k == 1:
        return Verdict(claim, "inconclusive", gap, se_test, f"{where}: gap {gap:+.2f} {unit}; one seed: the seed "
                       f"spread is unknown, so no verdict ({test_part})", unit=unit, values=values)
    se = math.sqrt(sd ** 2 / k + se_test ** 2)
    threshold = t975(k - 1) * se
    status = "reproduced" if gap > threshold else "not reproduced" if gap < -threshold else "inconclusive"
    short = (f"; undecided: the gap is {threshold - abs(gap):.2f} {unit} short of the threshold"
             if status == "inconclusive" else "")
    return Verdict(claim, status, gap, se, f"{where}: gap {gap:+.2f} {unit}, threshold {threshold:.2f} {unit} "
                   f"(t({k - 1}) x SE; seed SD {sd:.2f}, {test_part}){short}", threshold, unit=unit, values=values)


COMPARISONS = {  # the Table-1 (RA-PGD) and Table-2 (RA-AA) comparisons decided in every computed cell
    "1": [("AdvMoE", "AT (MoE)"), ("AdvMoE", "AT (S-Dense)"), ("AdvMoE", "AT (Sparse)"), ("AdvMoE", "AT (Dense)"),
          ("AT (S-Dense)", "AT (MoE)")],
    "2": [("AdvMoE", "AT (S-Dense)"), ("AdvMoE", "AT (Sparse)"), ("AdvMoE", "AT (MoE)")],
}


def comparison_verdicts(records: list[dict], preset: str, table: str = "1") -> list[Verdict]:
    """Table 1's or Table 2's verdicts in every cell the preset computes: each comparison of `COMPARISONS` on RA
    (RA-AA for Table 2), also under the worst case; Table 2 adds whether AutoAttack lowers AdvMoE's RA below PGD's
    on the same images (paired by image)."""
    metric, name = ("ra", "RA") if table == "1" else ("ra_aa", "RA-AA")
    verdicts = []
    for dataset, backbone in cells(preset, table=table):
        if runnable(dataset, backbone, preset):
            continue
        rs = [r for r in records if r["dataset"] == dataset and r["backbone"] == backbone]
        cell = f" ({backbone}, {dataset})"
        verdicts += [verdict(f"{a} {name} > {b} {name}{cell}", by_label(rs, a), by_label(rs, b), metric, preset,
                             also="ra_worst") for a, b in COMPARISONS[table]]
        if table == "2":
            advmoe = by_label(rs, "AdvMoE")
            as_ra = lambda key, bits: [{"final": {"ra": m["final"][key], "n_test": m["final"]["n_ra_aa"],  # noqa: E731
                                                  "correct": {"pgd": m["final"]["correct"][bits]}}} for m in advmoe]
            verdicts.append(verdict("AutoAttack lowers AdvMoE's RA below PGD's" + cell,
                                    as_ra("ra_pgd_aa_examples", "pgd_aa_examples"), as_ra("ra_aa", "aa"),
                                    preset=preset))
    return verdicts


def verdict_summary(verdicts: list[Verdict]):
    """The verdicts as a short Markdown list for the admonition under a page's claim (glued, shown there)."""
    from IPython.display import Markdown

    def line(v: Verdict) -> str:
        numbers = []
        if v.gap is not None:
            numbers.append(f"{v.gap_name} {v.gap:+.1f} {v.unit}")
        if v.threshold is not None:
            numbers.append(f"decidable beyond ±{v.threshold:.1f} {v.unit}")
            if v.status == "inconclusive":
                numbers.append(f"{v.threshold - abs(v.gap):.1f} {v.unit} short")
        elif v.status == "inconclusive" and "one seed" in v.detail:
            numbers.append("one seed: undecidable")
        if v.also:
            numbers.append(f"under the {v.also}")
        return f"- **{v.status}**: {v.claim}" + (f" ({', '.join(numbers)})" if numbers else "")

    return Markdown("\n".join(line(v) for v in verdicts))


def by_label(records: list[dict], label: str, dataset: str | None = None) -> list[dict]:
    return [r["metrics"] for r in records if r["label"] == label and r["metrics"] is not None
            and (dataset is None or r["dataset"] == dataset)]


def save_verdicts(notebook: str, preset: str, verdicts: list[Verdict], records: list[dict],
                  root: Path | None = None) -> Path:
    """results/<preset>/verdicts/<notebook>.json: what the claims ledger and the status page read."""
    done = [r["metrics"] for r in records if r["metrics"] is not None]
    provenance = sorted({(m["provenance"]["git_commit"] or "unknown")[:10] for m in done})
    payload = {
        "notebook": notebook, "preset": preset,
        "verdicts": [v.__dict__ for v in verdicts],
        "data": sorted({m["data"]["train"] for m in done}),
        "results_commits": provenance,
        "machines": sorted({f"{m['provenance']['device']} ({m['provenance']['device_name']}, "
                            f"{m['provenance']['torch_threads']} threads, " +
                            ("pinned numerics" if m["provenance"].get("numerics", {}).get("pinned") else "numerics not pinned")
                            + ")" for m in done}),
        "experiments": len(done),
        # every stored computation behind the page: training, evaluations, AutoAttack, audits, chain parents
        "compute_seconds": sum(r["seconds"] for r in compute_seconds(
            preset, root=root, specs=[r["spec"] for r in records if r["metrics"] is not None and r.get("spec")])),
    }
    path = Path(root or ex.results_root()) / preset / "verdicts" / f"{notebook}.json"
    atomic_write_json(payload, path)
    return path


COMPUTE_PARTS = {"metrics.json": "training + PGD", "autoattack-": "AutoAttack", "worst-case-": "worst case",
                 "eps-sweep-": "Fig. 2 sweep", "audit-": "audit", "dissection-": "dissection",
                 "mask-channels": "mask channels", "robust-experts-": "Robust Experts evaluation",
                 "dual-model-": "dual-model evaluation"}


def compute_seconds(preset: str, seeds: tuple[int, ...] | None = None, root: Path | None = None,
                    specs: list | None = None) -> list[dict]:
    """The measured compute behind the book, from the provenance of every stored result: one record per stored
    file of every page model (and seed), or of `specs`, and of their chain parents, each once, with its part
    (`COMPUTE_PARTS`) and the worker-seconds it took."""
    rows, chain = [], {}
    for spec in page_specs(preset, seeds) if specs is None else specs:
        while spec is not None:
            chain.setdefault(spec.hash, spec)
            spec = spec.parent
    for spec in chain.values():
        folder = ex.result_dir(spec, root)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            row = _compute_row(path)
            if row is not None and row["hash"] == spec.hash:
                rows.append(row)
    return rows


def stored_compute(preset: str, root: Path | None = None) -> list[dict]:
    """Every stored result of a preset (each model and evaluation under results/<preset>/, whichever page reads it),
    as `compute_seconds` rows: what recomputing everything stored costs."""
    folder = Path(root or ex.results_root()) / preset
    return [row for path in sorted(folder.glob("*/*.json")) if (row := _compute_row(path)) is not None]


def _compute_row(path: Path) -> dict | None:
    """A stored result file's part (`COMPUTE_PARTS`) and the worker-seconds its provenance records, or None."""
    part = next((v for k, v in COMPUTE_PARTS.items() if path.name.startswith(k)), None)
    data = ex.read_json(path) if part else None
    if data is None or "provenance" not in data or "spec" not in data:
        return None
    p, spec = data["provenance"], data["spec"]
    seconds = p["train_seconds_total"] + p["eval_seconds"] if part == "training + PGD" else p["seconds"]
    return dict(model=path.parent.name.rsplit("-", 1)[0], hash=data.get("hash"), kind=spec["kind"],
                method=spec["method"], seed=spec["seed"], part=part, seconds=seconds,
                commit=(p.get("git_commit") or "unknown")[:10])


def compute_note(records: list[dict], preset: str, root: Path | None = None) -> str:
    """One line for a page: the measured worker-minutes of everything its records stand on (models, their parents,
    every stored evaluation of them), from provenance. Models count by spec hash: an ablation grid shares one name."""
    rows = compute_seconds(preset, root=root, specs=[r["spec"] for r in records if r.get("spec") is not None])
    total = sum(r["seconds"] for r in rows) / 60
    return (f"Compute behind this page, measured: {total:.0f} worker-minutes over {len({r['hash'] for r in rows})} "
            f"models and their evaluations (shared with other pages where the models are the same).")


def page_table(preset: str, notebooks: Path | None = None, root: Path | None = None):
    """One row per notebook: the preset it last ran with, the data, code commits and machines of its stored results,
    its experiments and their measured compute (worker-minutes, from provenance), and the papermill run that last
    changed what it shows (`book.settle` keeps a page whose re-execution changed nothing)."""
    import pandas as pd

    stored = load_verdicts(preset, root)
    rows = []
    for path in sorted(Path(notebooks or REPO / "notebooks").glob("*.ipynb")):
        meta = json.loads(path.read_text())["metadata"].get("papermill", {})
        v = stored.get(path.stem, {})
        rows.append({
            "notebook": path.stem,
            "preset": meta.get("parameters", {}).get("preset", "-"),
            "data": "; ".join(d.split(" (")[0] for d in v.get("data", [])) or "-",
            "results from commit": ", ".join(x[:7] for x in v.get("results_commits", [])) or "-",
            "machine": "; ".join(m.partition(" (")[2].rstrip(")") or m for m in v.get("machines", [])) or "-",
            "experiments": v.get("experiments", 0),
            "experiment compute (min)": round(v.get("compute_seconds", 0) / 60, 1),
            "notebook run (s)": round(meta.get("duration") or 0, 1),
            "outputs last changed": (meta.get("end_time") or "-")[:10],
        })
    return pd.DataFrame(rows)


def load_verdicts(preset: str, root: Path | None = None) -> dict[str, dict]:
    folder = Path(root or ex.results_root()) / preset / "verdicts"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def bars(df, metric: str, title: str, ax=None):
    """Grouped bars: ours vs the paper's for one metric, per method."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    long = pd.concat([
        pd.DataFrame({"method": df.method, "value": df[f"{metric}_ours"], "source": "ours"}),
        pd.DataFrame({"method": df.method, "value": df[f"{metric}_paper"], "source": "paper"}),
    ]).dropna()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=long, x="method", y="value", hue="source", ax=ax, palette={"ours": "#4c72b0", "paper": "#bbbbbb"})
    names = {"ra": "Robust accuracy, PGD (%)", "sa": "Standard accuracy (%)", "ra_aa": "Robust accuracy, AutoAttack (%)",
             "ra_worst": "Robust accuracy, worst case (%)"}
    ax.set_ylabel(names[metric])
    ax.set_xlabel("method")
    ax.set_title(title)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f", fontsize=8)
    ax.tick_params(axis="x", labelrotation=15)
    return ax


FIG2_EPS = [2, 3, 4, 5, 6, 7, 8]  # the paper's attack strengths (/255); the Fig. 2 page's default eps_grid
def sec4_specs(preset: str, scale: float, seed: int = 0) -> dict:
    """The models of Sec. 4 (Fig. 3-5) at model scale r: M1 a standard-trained MoE; theta-bar its routers trained
    with TRADES, backbone fixed at M1's weights; theta-bar-bar theta-bar's backbone then trained, routers fixed
    (Fig. 5); M2 AT (S-Dense); M3 HYDRA's mask learned over a standard-trained Dense (weights fixed)."""
    m1 = ex.make_spec(preset, "moe", "standard", scale, seed=seed)
    theta_bar = ex.make_spec(preset, "moe", "at-routers", scale, parent=m1, seed=seed)
    return {"M1": m1, "theta-bar": theta_bar,
            "theta-bar-bar": ex.make_spec(preset, "moe", "at-backbone", scale, parent=theta_bar, seed=seed),
            "M2": ex.make_spec(preset, "s-dense", "at", scale, seed=seed),
            "M3": ex.hydra_chain(preset, scale, dense_method="standard", finetune=False, seed=seed)}


FIG2_MODELS = (("AT (S-Dense)", "s-dense"), ("AT (MoE)", "moe"))


def fig2_specs(preset: str) -> list:
    return [ex.make_spec(preset, kind, "at", 0.5, seed=seed) for _, kind in FIG2_MODELS for seed in ex.preset_seeds(preset)]


def fig2_sweep(spec, device: str = "cpu", root=None, recompute: bool = False, progress: bool = True, position: int = 0,
               eps_grid: list[float] = FIG2_EPS) -> dict:
    """The stored eps sweep of one Fig. 2 model (a task for `get_many`: the book computes them before the page)."""
    return ex.eps_sweep(spec, [e / 255 for e in eps_grid], device=device, root=root, recompute=recompute,
                        progress=progress)


def fig2(preset: str, device: str, recompute: bool, eps_grid: list[float]):
    """RA of AT(S-Dense) and AT(MoE) against PGD at each eps (in /255), per seed; and the per-eps verdicts."""
    import pandas as pd

    rows, verdicts = [], []
    dataset = ex.preset_settings(preset)["dataset"]
    sweeps = {}
    for label, kind in FIG2_MODELS:
        for seed in ex.preset_seeds(preset):
            spec = ex.make_spec(preset, kind, "at", 0.5, seed=seed)
            s = fig2_sweep(spec, device, recompute=recompute, progress=False, eps_grid=eps_grid)
            sweeps.setdefault(label, []).append(s)
            rows += [dict(model=label, seed=seed, eps=e, ra=100 * ra, steps=s["steps"]) for e, ra in zip(eps_grid, s["ra"])]
    for i, e in enumerate(eps_grid):
        as_metrics = {k: [{"final": {"ra": s["ra"][i], "n_test": s["n_test"]}} for s in v] for k, v in sweeps.items()}
        verdicts.append(verdict(f"AT (S-Dense) RA > AT (MoE) RA at eps {e:g}/255", as_metrics["AT (S-Dense)"],
                                as_metrics["AT (MoE)"], preset=preset))
    paper_points = [dict(model=lbl, eps=8, ra=paper.value("cifar10", "resnet18", pid, 0.5, "ra")[0])
                    for lbl, pid in (("AT (S-Dense)", "at-s-dense"), ("AT (MoE)", "at-moe"))]
    return pd.DataFrame(rows), pd.DataFrame(paper_points), verdicts, dataset


def combine(claim: str, verdicts: list[Verdict]) -> Verdict:
    """One verdict for a claim made of several: reproduced only if every part is."""
    statuses = [v.status for v in verdicts]
    status = next((s for s in ("not run", "not reproduced", "inconclusive") if s in statuses), "reproduced")
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    return Verdict(claim, status, None, None, f"{len(verdicts)} part{'s' if len(verdicts) > 1 else ''}: {counts}")


PLATEAU_MARGIN = 2.0  # pp: a change this small over the last quarter of training counts as a plateau (Fig. A2)


def trajectories(records: list[dict]):
    """One row per (model, seed, epoch) of the records' training histories (Fig. A2): training loss, test SA on the
    experiment's test set and, where the run tracked it, RA against PGD on its fixed tracking subset (in %)."""
    import pandas as pd

    rows = []
    for r in records:
        for h in (r["metrics"] or {}).get("history", []):
            tracked = h.get("tracked", {})
            rows.append(dict(model=r["label"], seed=r["seed"], epoch=h["epoch"], train_loss=h["train_loss"],
                             sa=100 * h["test_sa"], n_sa=r["metrics"]["final"]["n_test"],
                             ra=100 * h["test_ra_tracked"] if "test_ra_tracked" in h else None,
                             n_ra=tracked.get("n"), ra_steps=tracked.get("steps")))
    return pd.DataFrame(rows)


def plateau_verdict(claim: str, model: str, df, metric: str, preset: str = "",
                    margin: float = PLATEAU_MARGIN) -> Verdict:
    """Has `metric` of `model` (a label in df, from `trajectories`) stopped moving at the end of training? An equivalence test on the change from the
    epoch at 3/4 of the schedule to the last one, per seed: reproduced (a plateau) if mean +- t(k-1) x SE lies
    inside +-margin; not reproduced if it lies wholly above (still rising) or below (falling back: robust
    overfitting); else inconclusive. SE: the seed spread of the change, and the test-set term of two accuracies on
    the same n images counted as independent (the per-image results per epoch are not stored, so the pairing cannot
    be used: an upper bound, which only makes a plateau harder to show)."""
    d = df[(df.model == model) & df[metric].notna()]
    if d.empty:
        return Verdict(claim, "not run", None, None, "no per-epoch values stored at this preset")
    last = int(d.epoch.max())
    first = max(1, min(last - 1, math.ceil(0.75 * last)))  # 8 epochs: 6 -> 8
    wide = d.pivot_table(index="seed", columns="epoch", values=metric)
    deltas = (wide[last] - wide[first]).dropna().tolist()
    k = len(deltas)
    change, sd = _mean_std(deltas)
    n = int(d[f"n_{metric}"].iloc[0])
    p0, p1 = wide[first].mean() / 100, wide[last].mean() / 100
    se_test = 100 * math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)
    where = f"{preset} preset, {k} seed{'s' if k > 1 else ''}, {n} test images, epochs {first} -> {last}"
    if k == 1:
        return Verdict(claim, "inconclusive", change, se_test, f"{where}: change {change:+.2f} pp; one seed: the seed "
                       f"spread is unknown, so no verdict", gap_name="change")
    se = math.sqrt(sd ** 2 / k + se_test ** 2)
    half = t975(k - 1) * se
    lo, hi = change - half, change + half
    status = ("reproduced" if -margin < lo and hi < margin else
              "not reproduced" if lo > margin or hi < -margin else "inconclusive")
    short = (f"; undecided: the interval reaches {max(abs(lo), abs(hi)) - margin:.2f} pp beyond the margin"
             if status == "inconclusive" else "")
    return Verdict(claim, status, change, se, f"{where}: change {change:+.2f} pp, 95% interval [{lo:+.2f}, {hi:+.2f}] "
                   f"against the plateau margin +-{margin:g} pp (t({k - 1}) x SE; seed SD {sd:.2f}, test-set SE "
                   f"{se_test:.2f}){short}", gap_name="change")
