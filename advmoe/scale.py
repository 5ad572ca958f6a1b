"""Model scale and expert number (paper Sec. 5.2, Fig. 7 and 8; Appendix C, Tables A1 and A2): what those pages call.

Fig. 7: AdvMoE's RA over expert numbers N and model scales r, against AT (Dense) (r = 1). The paper finds an
effective regime (N < 8 and r in [0.5, 0.9]) where AdvMoE beats AT (Dense), and an ineffective one (N >= 8 and
r < 0.5) where it falls behind. Fig. 8 / Table A2: Table 1's r = 0.5 methods at other scales. Table A1: the Table-1
slice trained with a 10-step attack. A point a verdict reads has the preset's seeds, any other point its first seed
only (plotted, never decided); at the paper preset every point has every seed.
"""
from __future__ import annotations

import functools

from . import experiments as ex
from .report import Verdict, collect, combine, per_image, verdict

GRIDS = {  # preset -> (expert numbers N, model scales r) of Fig. 7
    "smoke": ([2, 8], [0.2, 0.5]),
    "cpu": ([2, 5, 10], [0.2, 0.5, 0.8]),
    "paper": ([2, 5, 8, 10], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
}
# The points a verdict reads (the preset's seeds; any other point its first seed only). cpu: one point per regime,
# sized to the 2 h on 2 cores by `benchmarks/scale_cost.py` (the stored Table-1 AdvMoE and N = 10 at r = 0.2).
VERDICT_POINTS = {"smoke": [(2, 0.5), (8, 0.2)], "cpu": [(2, 0.5), (10, 0.2)]}  # paper: every point
FIG8_SCALES = {"smoke": [0.2, 0.5], "cpu": [0.2, 0.5, 0.8], "paper": [0.2, 0.5, 0.8]}
FIG8_VERDICT_SCALES = {"smoke": [0.2, 0.5], "cpu": [0.2, 0.5]}  # paper: every scale; cpu: r = 0.8 has 2.6x r = 0.5's FLOPs
FIG8_ROWS = tuple(row for row in ex.TABLE1 if row[0] != "AT (Dense)")  # the r = 0.5 methods, at every r


def regime(n: int, r: float) -> str | None:
    """The paper's reading of Fig. 7: 'effective' (N < 8, r in [0.5, 0.9]), 'ineffective' (N >= 8, r < 0.5), else
    None (the figure claims nothing there)."""
    if n < 8 and 0.5 <= r <= 0.9:
        return "effective"
    if n >= 8 and r < 0.5:
        return "ineffective"
    return None


def point_seeds(preset: str, n: int, r: float) -> tuple[int, ...]:
    seeds = ex.preset_seeds(preset)
    return seeds if preset == "paper" or (n, r) in VERDICT_POINTS[preset] else seeds[:1]


def fig8_seeds(preset: str, r: float) -> tuple[int, ...]:
    seeds = ex.preset_seeds(preset)
    return seeds if preset == "paper" or r in FIG8_VERDICT_SCALES[preset] else seeds[:1]


PAGE_EVALUATIONS = {"fig7": ("training + PGD",), "fig8": ("training + PGD",),  # as the paper's Table A2: RA-PGD
                    "tabA1": ("training + PGD", "AutoAttack", "worst case")}


PAGES = {"fig7": "notebooks/fig7_experts_vs_scale.ipynb", "fig8": "notebooks/fig8_tabA2_model_scale.ipynb",
         "tabA1": "notebooks/tabA1_train_steps.ipynb"}


def plan(preset: str, pages=tuple(PAGES)) -> list[tuple[str, ex.ExperimentSpec]]:
    """Every model the scale pages (`pages`, keys of PAGES) read at a preset, as (page, spec), each model once (under
    the first page that reads it), chain parents included: Fig. 7's AdvMoE grid, Fig. 8's methods at each r (AT
    (Dense) at r = 1 for both), Table A1's 10-step rows."""
    out, seen = [], set()

    def add(page, spec):
        while spec is not None and page in pages:
            if spec.hash not in seen:
                seen.add(spec.hash)
                out.append((page, spec))
            spec = spec.parent

    experts, scales = GRIDS[preset]
    for seed in ex.preset_seeds(preset):
        add("fig7", ex.row_spec(preset, *ex.TABLE1[0][1:], seed=seed))
        add("fig8", ex.row_spec(preset, *ex.TABLE1[0][1:], seed=seed))
    for n in experts:
        for r in scales:
            for seed in point_seeds(preset, n, r):
                add("fig7", ex.make_spec(preset, "moe", "advmoe", r, n_experts=n, seed=seed))
    for r in FIG8_SCALES[preset]:
        for _, kind, method, _ in FIG8_ROWS:
            for seed in fig8_seeds(preset, r):
                add("fig8", ex.row_spec(preset, kind, method, r, seed=seed))
    for row in tablea1_rows(preset):
        for seed in ex.preset_seeds(preset):
            add("tabA1", ex.row_spec(preset, *row[1:], seed=seed, **ex.train_attack(10)))
    return out


def precompute(preset: str, device: str = "cpu", jobs: int = 1, progress: bool = True, pages=tuple(PAGES)) -> None:
    """Train what the scale pages (`pages`) need, `jobs` at a time, and Table A1's worst case (stored ones are
    reused), so that the pages only read."""
    from .worstcase import worst_case_eval

    todo = plan(preset, pages)
    ex.get_many([s for _, s in todo], device, progress=progress, jobs=jobs)
    table = [s for page, s in todo if page == "tabA1" and s.method != "hydra-mask"]
    if table:
        ex.get_many(table, device, progress=progress, jobs=jobs, task=worst_case_eval)


def estimate(preset: str, seconds: dict | None = None, root=None, progress: bool = True):
    """The plan's cost, one row per (model, evaluation part): measured worker-minutes where the result is stored,
    else an estimate: the measured cost of the same part of the preset's Table-1 model of that kind and method
    (median over its seeds), times the ratio of their training-iteration times (`bench.iteration_seconds`, the
    2-step attack's for evaluation parts, whose cost does not depend on the training attack). seconds: iteration
    times from an earlier call (else timed now, a few minutes)."""
    import dataclasses
    import statistics

    import pandas as pd

    from . import bench
    from .report import compute_seconds, page_specs

    measured = pd.DataFrame(compute_seconds(preset, root=root))
    refs = {}  # (kind, method) -> the first-seed Table-1 / Fig. 1b model (or chain parent) of that kind and method
    for spec in page_specs(preset, ex.preset_seeds(preset)[:1]):
        while spec is not None:
            refs.setdefault((spec.kind, spec.method), spec)
            spec = spec.parent
    default = ex.make_spec(preset, "dense", "at")
    two_step = lambda s: dataclasses.replace(s, train_steps=default.train_steps, train_step_size=default.train_step_size)
    rows, todo = [], plan(preset)
    if seconds is None:
        seconds = bench.iteration_seconds([s for _, s in todo] + [two_step(s) for _, s in todo] + list(refs.values()),
                                          progress=progress)
    stored = pd.DataFrame(compute_seconds(preset, root=root, specs=[s for _, s in todo]))
    for page, spec in todo:
        ref = refs[(spec.kind, spec.method)]
        for part in PAGE_EVALUATIONS[page] if spec.method != "hydra-mask" else ("training + PGD",):
            done = stored[(stored.hash == spec.hash) & (stored.part == part)] if len(stored) else stored
            if len(done):
                rows.append(dict(page=page, model=spec.name, seed=spec.seed, part=part, stored=True,
                                 minutes=done.seconds.sum() / 60))
                continue
            base = measured[(measured.kind == spec.kind) & (measured.method == spec.method) & (measured.part == part)]
            timed = spec if part == "training + PGD" else two_step(spec)
            ratio = seconds[bench.config(timed)] / seconds[bench.config(ref)]
            rows.append(dict(page=page, model=spec.name, seed=spec.seed, part=part, stored=False,
                             minutes=statistics.median(base.seconds) * ratio / 60 if len(base) else None))
    return pd.DataFrame(rows), seconds


def fig7(preset: str, device: str, recompute: bool, experts_grid: list[int], scale_grid: list[float]):
    """AdvMoE's RA at each (N, r) and seed, AT (Dense)'s for reference; the verdicts of both regimes; the records."""
    import pandas as pd

    dataset = ex.preset_settings(preset)["dataset"]
    dense = collect([ex.TABLE1[0]], preset, device, recompute, dataset, "resnet18")
    rows = [dict(model="AT (Dense)", n=None, r=1.0, seed=d["seed"], ra=100 * d["metrics"]["final"]["ra"]) for d in dense]
    records, by = list(dense), {}
    for n in experts_grid:
        for r in scale_grid:
            for seed in point_seeds(preset, n, r):
                spec = ex.make_spec(preset, "moe", "advmoe", r, n_experts=n, seed=seed)
                m = ex.get(spec, device, recompute=recompute, progress=False)
                by.setdefault((n, r), []).append(m)
                records.append(dict(label=f"AdvMoE N={n} r={r:g}", seed=seed, metrics=m, spec=spec))
                rows.append(dict(model="AdvMoE", n=n, r=r, seed=seed, ra=100 * m["final"]["ra"]))
    base = [d["metrics"] for d in dense]
    parts = {"effective": [], "ineffective": []}
    for (n, r), ms in by.items():
        kind = regime(n, r)
        if kind == "effective" and len(ms) > 1:
            parts[kind].append(verdict(f"AdvMoE (N = {n}, r = {r:g}) RA > AT (Dense) RA", ms, base[:len(ms)], preset=preset))
        elif kind == "ineffective" and len(ms) > 1:
            parts[kind].append(verdict(f"AT (Dense) RA > AdvMoE (N = {n}, r = {r:g}) RA", base[:len(ms)], ms, preset=preset))
    verdicts = parts["effective"] + parts["ineffective"]
    for kind, claim in (("effective", "AdvMoE beats AT (Dense) where N < 8 and r in [0.5, 0.9]"),
                        ("ineffective", "AdvMoE falls behind AT (Dense) where N >= 8 and r < 0.5")):
        verdicts.append(combine(claim, parts[kind]) if parts[kind] else
                        Verdict(claim, "not run", None, None, "no point of this regime with several seeds in the grid"))
    return pd.DataFrame(rows), verdicts, records


def fig8(preset: str, device: str, recompute: bool, scale_grid: list[float]):
    """Every Table-1 method at each scale (AT (Dense) at r = 1), the seeds `fig8_seeds` gives, with the verdicts at
    the scales that have every seed: AdvMoE beats each same-r baseline (per r, then all of them), and its gain over the
    best same-r baseline (by mean RA) grows from the smallest such r to the largest."""
    dataset = ex.preset_settings(preset)["dataset"]
    records = collect([ex.TABLE1[0]], preset, device, recompute, dataset, "resnet18")
    for r in scale_grid:
        records += collect([(label, kind, method, r) for label, kind, method, _ in FIG8_ROWS], preset, device,
                           recompute, dataset, "resnet18", seeds=fig8_seeds(preset, r))
    get = lambda label, r: [x["metrics"] for x in records if x["label"] == label and x["scale"] == r]
    decided = [r for r in scale_grid if preset == "paper" or r in FIG8_VERDICT_SCALES[preset]]
    baselines = [label for label, *_ in FIG8_ROWS if label != "AdvMoE"]
    verdicts, gains = [], {}
    for r in decided:
        parts = [verdict(f"AdvMoE RA > {b} RA at r = {r:g}", get("AdvMoE", r), get(b, r), preset=preset) for b in baselines]
        verdicts += parts + [combine(f"AdvMoE beats every same-r baseline at r = {r:g}", parts)]
        best = max(baselines, key=lambda b: sum(m["final"]["ra"] for m in get(b, r)))
        gains[r] = [per_image([int(x) - int(y) for x, y in zip(a["final"]["correct"]["pgd"], b["final"]["correct"]["pgd"])])
                    for a, b in zip(get("AdvMoE", r), get(best, r))]
    if len(decided) > 1:
        lo, hi = min(decided), max(decided)
        verdicts.append(verdict(f"AdvMoE's gain over the best same-r baseline grows with r: larger at r = {hi:g} than at "
                                f"r = {lo:g}", gains[hi], gains[lo], "v", preset))
    return records, verdicts


def tablea1_rows(preset: str) -> tuple:
    """Table A1's rows at a preset. cpu: AT (MoE) and AdvMoE only, the comparison that isolates the training method on
    one architecture (a stronger training attack might be what AT (MoE)'s routers lacked). The whole slice at 10 steps,
    3 seeds, would cost about 6 h on 2 cores at this preset (estimated from measured costs: `benchmarks/scale_cost.py`);
    these two rows' measured cost is in results/cpu/scale-cost.json."""
    return tuple(row for row in ex.TABLE1 if preset != "cpu" or row[0] in ("AT (MoE)", "AdvMoE"))


def tablea1_records(preset: str, device: str, recompute: bool, steps: int | None = 10) -> list[dict]:
    """The records of Table A1's rows run at a preset (`tablea1_rows`), trained with a `steps`-step attack
    (`ex.train_attack`; None: the preset's own, i.e. Table 1's models), with RA-AA and the worst case over every attack."""
    from .report import with_autoattack

    dataset = ex.preset_settings(preset)["dataset"]
    attack = {} if steps is None else ex.train_attack(steps)
    records = collect(tablea1_rows(preset), preset, device, recompute, dataset, "resnet18", **attack)
    return with_autoattack(records, device, recompute)


def table_a1(preset: str, device: str, recompute: bool):
    """Table A1's rows trained with a 10-step attack (`tablea1_records`), the rows not run at this preset as "not run"
    records, and C14's verdicts: AdvMoE beats each baseline in RA-PGD (the worst case as second metric)."""
    dataset = ex.preset_settings(preset)["dataset"]
    rows = tablea1_rows(preset)
    records = tablea1_records(preset, device, recompute) + [
        dict(dataset=dataset, backbone="resnet18", label=label, kind=kind, method=method, scale=r, seed=None,
             metrics=None, why="not run at this preset (compute; see below)")
        for label, kind, method, r in ex.TABLE1 if (label, kind, method, r) not in rows]
    get = lambda label: [x["metrics"] for x in records if x["label"] == label and x["metrics"] is not None]
    verdicts = [verdict(f"10-step training: AdvMoE RA > {label} RA", get("AdvMoE"), get(label), preset=preset,
                        also="ra_worst") for label, *_ in rows if label != "AdvMoE"]
    claim = "With a 10-step training attack AdvMoE beats every baseline" + (
        "" if len(rows) == len(ex.TABLE1) else f" run at this preset ({', '.join(r[0] for r in rows if r[0] != 'AdvMoE')})")
    return records, verdicts + [combine(claim, verdicts)]


GPU_REFERENCE = {("dense", "at"): "AT (Dense)", ("s-dense", "at"): "AT (S-Dense)", ("moe", "at"): "AT (MoE)",
                 ("moe", "advmoe"): "AdvMoE", ("sparse", "hydra-mask"): "AT (Sparse), mask stage",
                 ("s-dense", "hydra-finetune"): "AT (Sparse), fine-tuning"}
GPU_FALLBACK = {"AT (Sparse), mask stage": "AT (Dense)", "AT (Sparse), fine-tuning": "AT (S-Dense)"}  # same shapes


def gpu_work(spec) -> float:
    """GFLOPs per example a GPU executes for `spec`'s model at the paper's widths: on a GPU an MoE layer computes
    every expert and masks (`advmoe.models.moe`), so N x one pathway; HYDRA's mask stage runs the full Dense width."""
    if spec.kind == "moe":
        return spec.n_experts * _paper_width_gflops(spec.backbone, "s-dense", spec.scale)
    if spec.kind in ("dense", "sparse"):
        return _paper_width_gflops(spec.backbone, "dense", 1.0)
    return _paper_width_gflops(spec.backbone, spec.kind, spec.scale)


@functools.lru_cache(maxsize=None)
def _paper_width_gflops(backbone: str, kind: str, scale: float) -> float:
    from .report import paper_width_gflops

    return paper_width_gflops(backbone, kind, scale)


def paper_gpu_hours(measured: dict):
    """Every run the scale pages need at the paper preset (`plan("paper")`), one row per configuration with its seeds
    and estimated GPU hours. Not timed on a GPU: each is the measured hours per seed of the Table-1 model of its kind
    and method (`measured`: benchmarks/paper_preset_gpu.py's output) times the ratio of executed GFLOPs (`gpu_work`),
    floored at 1 (at these sizes the H100 ran AT (S-Dense), a quarter of Dense's FLOPs, no faster than AT (Dense), so a
    smaller model is not assumed faster), times the training attack's cost: a TRADES step with k attack steps costs
    about 3k + 6 forward-pass equivalents, 12 for Table 1's k = 2."""
    import pandas as pd

    models = measured["models"]
    sparse = ex.hydra_chain("paper", 0.5)
    refs = {label: ex.row_spec("paper", *row) for label, *row in ex.TABLE1 if label != "AT (Sparse)"}
    refs.update({"AT (Sparse), mask stage": sparse.parent, "AT (Sparse), fine-tuning": sparse})
    rows = {}
    for page, spec in plan("paper"):
        ref_label = GPU_REFERENCE[(spec.kind, spec.method)]
        ref_label = ref_label if ref_label in models else GPU_FALLBACK[ref_label]
        factor = max(1.0, gpu_work(spec) / gpu_work(refs[ref_label])) * (3 * spec.train_steps + 6) / 12
        key = (page, GPU_REFERENCE[(spec.kind, spec.method)], spec.n_experts if spec.kind == "moe" else None,
               spec.scale, spec.train_steps)
        row = rows.setdefault(key, dict(page=page, run=key[1], N=key[2], r=spec.scale, train_steps=spec.train_steps,
                                        seeds=0, hours_per_seed=models[ref_label]["hours_per_seed"] * factor,
                                        timed_as=ref_label))
        row["seeds"] += 1
    df = pd.DataFrame(rows.values())
    df["hours"] = df.seeds * df.hours_per_seed
    return df
