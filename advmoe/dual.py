"""The dual-model chapter (Zhang, Xu, Hu, Wang, ICML 2025: where an MoE of whole networks is vulnerable, RT-ER, the
dual model's alpha, JTDMoE, certified radii): its presets, its models, and the evaluation each model gets beside its
metrics (`evaluate`, stored as dual-model-*.json).

What is known of the paper and the released code: ../shared/papers/dual-model-2025-facts.md. The networks are
`advmoe.models.netmoe`, the training methods `rt-er` and `jtdmoe` of `advmoe.train`, the component attacks
`advmoe.attacks.component_attack`, the radii `advmoe.certify`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from . import certify
from . import data as datalib
from . import experiments as ex
from .attacks import component_attack
from .evaluate import robust_accuracy
from .data import REPO
from .io import bits, read_json
from .models import DualModel, record_routing

ALPHAS = tuple(i / 10 for i in range(11))  # the alpha sweep; the authors' JTDMoE scripts use 0.7
PAPER_ALPHA = 0.7
# The alpha sweep's worst case: after PGD, every attack of `worstcase.attacks` but AutoAttack and APGD-T on the
# soft-routing surrogate (its three targets cost three times APGD-CE there, where every expert of both MoEs runs).
SWEEP_SKIP = ("soft-apgd-t",)
CERTIFY_EPS = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)  # certified fractions are reported at these radii


def settings(preset: str) -> dict:
    """The spec fields this chapter's preset sets (the rest are ExperimentSpec defaults), and its evaluation sizes.

    paper: the authors' protocol as far as it is known (facts file Sec. 2): CIFAR-10, E = 4 ResNet-18 experts (width
    64), 130 epochs (the paper; their script's default is 200), batch 512, Adam lr 1e-4 without weight decay under
    their CyclicLR (lr / 2 to lr, 500 iterations up), PGD-10 training attack (eps 8/255, step 2/255, a real random
    start), PGD-50 evaluation, beta = 6; fp32 (their fp16 autocast is not copied). cpu: the CIFAR-10 JPEG copy, width
    16, 5,000 training and 1,000 test images, 8 epochs, batch 128 and SGD lr 0.1 with the cosine schedule as every
    cpu preset of the book (Adam at 1e-4 barely moves a network in a few epochs), and a PGD-5 training attack:
    `benchmarks/dual_cost.py` timed an epoch at 19 s (standard), 141 s (AT), 304 s (RT-ER) and 756 s (JTDMoE) with
    PGD-10, about 23 worker-hours for the chapter with its evaluations; with PGD-5 about 80, 180 and 500 s (about
    13: results/bench/dual-model-cost-cpu.json).
    n_sweep: the images of the alpha sweep's PGD; n_worst: of its worst case (at every alpha: every attack but
    AutoAttack and `SWEEP_SKIP`).
    """
    common = dict(n_experts=4, train_eps=8 / 255, train_step_size=2 / 255, train_steps=10, eval_eps=8 / 255,
                  eval_step_size=2 / 255, eval_steps=50, beta=6.0)
    if preset == "smoke":
        return dict(spec={**common, "dataset": "cifar10-jpeg", "base_width": 8, "epochs": 2, "batch_size": 32,
                          "train_subset": 128, "test_subset": 32, "eval_steps": 5, "train_steps": 2, "lr": 0.1},
                    n_sweep=16, n_worst=8)
    if preset == "cpu":
        return dict(spec={**common, "dataset": "cifar10-jpeg", "base_width": 16, "epochs": 8, "batch_size": 128,
                          "train_subset": 5_000, "test_subset": 1_000, "lr": 0.1, "train_steps": 5},
                    n_sweep=200, n_worst=50)
    if preset == "paper":
        return dict(spec={**common, "dataset": "cifar10", "base_width": 64, "epochs": 130, "batch_size": 512,
                          "train_subset": None, "test_subset": None, "lr": 1e-4, "weight_decay": 0.0,
                          "optimizer": "adam", "schedule": "cyclic"},
                    n_sweep=None, n_worst=1_000)
    raise ValueError(f"the dual-model chapter has no preset {preset!r}; allowed: smoke, cpu, paper")


def describe(preset: str) -> str:
    """One line for a page: what the preset trains and how it attacks, its seeds in the book and what is not yet."""
    cfg = settings(preset)
    s = cfg["spec"]
    images = lambda n, what: f"{n:,} {what} images" if n else f"every {what} image"
    return (f"{preset} preset: E = {s['n_experts']} ResNet-18 experts of width {s['base_width']} on {s['dataset']} "
            f"({images(s['train_subset'], 'training')}), {s['epochs']} epochs, {s.get('optimizer', 'sgd').upper()} "
            f"lr {s['lr']:g}, training attack PGD-{s['train_steps']} (eps 8/255, step 2/255), beta = {s['beta']:g}; "
            f"evaluated with PGD-{s['eval_steps']} on {images(s['test_subset'], 'test')}, AutoAttack and the worst "
            f"case on {images(ex.autoattack_settings(preset)[1], 'test')}; the alpha sweep's PGD on "
            f"{images(cfg['n_sweep'], 'test')}, its worst case on {images(cfg['n_worst'], 'test')}; seeds "
            f"{', '.join(map(str, book_seeds(preset)))}. {pending(preset)}").strip()


def spec(preset: str, kind: str = "network-moe", method: str = "standard", seed: int = 0,
         **fields) -> ex.ExperimentSpec:
    """A model of this chapter: kind "network-moe" (method standard, pgd-at or rt-er) or "dual-moe" (jtdmoe);
    fields: beta, router_trains, alpha, ... (the preset's values otherwise)."""
    if kind not in ex.NETWORK_METHODS:
        raise ValueError(f"this chapter's models are {' or '.join(ex.NETWORK_METHODS)}, not {kind!r}")
    return ex.ExperimentSpec(preset=preset, kind=kind, method=method, **{**settings(preset)["spec"], **fields},
                             seed=seed)


# The models the verdicts compare, each with every seed of the preset: an MoE of four networks trained normally, with
# PGD-AT, with RT-ER (beta = 6), and JTDMoE's jointly trained dual model (alpha = 0.7). The separately trained dual
# model is "ST MoE" as F_S and "RT-ER MoE" as F_R, of the same seed.
MODELS = {
    "ST MoE": ("network-moe", dict(method="standard")),
    "AT MoE": ("network-moe", dict(method="pgd-at")),
    "RT-ER MoE": ("network-moe", dict(method="rt-er")),
    "JTDMoE": ("dual-moe", dict(method="jtdmoe")),
}
# The ablations, the preset's first seed only (plotted, never decided on): the beta grid of the paper's Table 9 and
# the released design, whose router never trains (facts file C3).
ABLATIONS = {
    **{f"RT-ER MoE, beta = {b}": ("network-moe", dict(method="rt-er", beta=float(b))) for b in (1, 3, 9)},
    "RT-ER MoE, frozen router (released)": ("network-moe", dict(method="rt-er", router_trains=False)),
}
PAIR = ("ST MoE", "RT-ER MoE")  # the separately trained dual model: (F_S, F_R)


# The cpu preset's units in the book so far: a seed enters when the units of all four `MODELS` at it are stored, the
# ablations when all four of theirs are (`benchmarks/units.py dual --more` computes the rest; `pending` names them).
# Every other preset reads, and computes, all of them.
CPU_BOOK = dict(seeds=(0, 1, 2), ablations=True)


def book_seeds(preset: str) -> tuple[int, ...]:
    return CPU_BOOK["seeds"] if preset == "cpu" else ex.preset_seeds(preset)


def book_ablations(preset: str) -> bool:
    return CPU_BOOK["ablations"] if preset == "cpu" else True


def pending(preset: str) -> str:
    """One sentence for a page: the preset's models not yet in the book and the command that computes them ("" if
    none)."""
    seeds = [s for s in ex.preset_seeds(preset) if s not in book_seeds(preset)]
    missing = ([f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} of every model"] if seeds else [])
    missing += [] if book_ablations(preset) else ["the ablations (beta = 1, 3, 9 and the frozen router)"]
    if not missing:
        return ""
    return (f"Not yet in the book at the {preset} preset: {' and '.join(missing)}; "
            f"`python benchmarks/units.py dual --preset {preset} --more` computes them.")


def model_spec(preset: str, label: str, seed: int = 0) -> ex.ExperimentSpec:
    kind, fields = {**MODELS, **ABLATIONS}[label]
    return spec(preset, kind, seed=seed, **fields)


def plan(preset: str, ablations: bool = True) -> list[ex.ExperimentSpec]:
    """Every model this chapter reads: each seed's F_S first, then every other verdict model, first seeds first;
    then the ablations (the first seed)."""
    seeds = ex.preset_seeds(preset)
    out = [model_spec(preset, PAIR[0], s) for s in seeds]
    out += [model_spec(preset, label, s) for s in seeds for label in MODELS if label != PAIR[0]]
    return out + ([model_spec(preset, label, seeds[0]) for label in ABLATIONS] if ablations else [])


def book_plan(preset: str) -> list[ex.ExperimentSpec]:
    """The models of `plan` the book's pages read at `preset` (`book_seeds`, `book_ablations`)."""
    return [s for s in plan(preset, book_ablations(preset)) if s.seed in book_seeds(preset)]


def _name(spec_: ex.ExperimentSpec, what: str, partner: ex.ExperimentSpec | None = None) -> str:
    cfg = settings(spec_.preset)
    key = json.dumps({"alphas": ALPHAS, "eps": CERTIFY_EPS, "n_sweep": cfg["n_sweep"], "n_worst": cfg["n_worst"],
                      "partner": partner.hash if partner else None}, sort_keys=True)
    return f"dual-model-{what}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.json"


def _test(spec_: ex.ExperimentSpec, dev, n: int | None = None):
    test = datalib.load(spec_.dataset, "test", subset=spec_.test_subset, seed=ex.SUBSET_SEED)
    if n is not None and n < len(test):
        test = test.subset(n, ex.SUBSET_SEED)
    return test, datalib.to_float(test.images, dev), test.labels.to(dev)


def certified(radius: torch.Tensor) -> dict:
    """Per eps of `CERTIFY_EPS`, the fraction of images certified (radius >= eps); the radius's median and maximum;
    and the per-image bits at 8/255 (for paired comparisons)."""
    return {"fraction": {f"{e * 255:g}/255": float((radius >= e).float().mean()) for e in CERTIFY_EPS},
            "median": float(radius.median()), "max": float(radius.max()),
            "correct_8": bits(radius >= 8 / 255)}


def _components(model, x, y, spec_, generator) -> dict:
    """RA-E and RA-R per image (`attacks.component_attack`, the evaluation PGD), in batches."""
    out = {}
    for target in ("experts", "router"):
        correct = torch.cat([component_attack(model, x[i:i + 250], y[i:i + 250], spec_.eval_eps, spec_.eval_step_size,
                                              spec_.eval_steps, target, generator=generator).cpu()
                             for i in range(0, len(x), 250)])
        out[target] = {"ra": float(correct.float().mean()), "correct": bits(correct)}
    return out


def _router_change(model, spec_) -> float:
    """The largest change of any router weight from its initialisation (the model as `experiments.run` built it)."""
    torch.manual_seed(spec_.seed)
    initial = ex.model_for(spec_)
    return float((model.router.fc.weight.detach().cpu() - initial.router.fc.weight.detach()).abs().max())


def evaluate(spec_: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
             progress: bool = True) -> dict:
    """The chapter's evaluation of a trained network MoE, stored beside its metrics (computed if missing):

    - components: RA-E (PGD with the routing held at the clean choice) and RA-R (PGD on the router's choice, the
      experts as they are), per image on the experiment's test images (RA, PGD on the whole MoE, is its metric);
    - routing: how many clean test images each expert receives; router_change: the largest change of a router weight
      since initialisation (0 for the released design's frozen router);
    - certified: the L-inf radius of `certify.moe_radius` per test image, as fractions certified per eps.
    """
    if spec_.kind != "network-moe":
        raise ValueError(f"evaluate reads a network MoE; a dual model is evaluated by `sweep`, not {spec_.kind!r}")

    def compute(model, dev):
        _, x, y = _test(spec_, dev)
        generator = torch.Generator(dev).manual_seed(spec_.seed)
        model.eval()
        with torch.no_grad(), record_routing(model) as routes:
            model(x)
        radius = certify.moe_radius(model, x, y)
        return {"components": _components(model, x, y, spec_, generator), "n_test": len(y),
                "routing": routes.histogram()["moe"], "router_change": _router_change(model, spec_),
                "certified": certified(radius["radius"]),
                "certified_route_median": float(radius["route"].median()),
                "certified_expert_median": float(radius["expert"].median())}

    return ex.evaluation(spec_, _name(spec_, "components"), compute, device, root, recompute, progress)


def blend(dual: DualModel, alpha: float):
    """The dual model at `alpha`: its standard MoE alone at 0, its robust MoE alone at 1 (so that attacks through the
    routing of a model with weight 0 are not run), the blend between."""
    if alpha == 0:
        return dual.standard
    if alpha == 1:
        return dual.robust
    dual.alpha = float(alpha)
    return dual


def _alpha_point(dual: DualModel, alpha: float, spec_, cfg, dev) -> dict:
    """SA, RA-PGD (the evaluation PGD) on n_sweep images, the worst case (PGD, then every attack of `worstcase`
    but AutoAttack) on the first n_worst of them, and the certified fractions, of the dual model at `alpha`."""
    from .worstcase import worst_case

    test, x, y = _test(spec_, dev, cfg["n_sweep"])
    model = blend(dual, alpha).eval()
    correct = []
    ra = robust_accuracy(model, test, dev, spec_.eval_eps, spec_.eval_step_size, spec_.eval_steps, seed=spec_.seed,
                         progress=False, per_example=correct)
    correct = torch.cat(correct)
    with torch.no_grad():
        clean = torch.cat([(model(x[i:i + 250]).argmax(1) == y[i:i + 250]).cpu() for i in range(0, len(x), 250)])
    n = min(cfg["n_worst"], len(y))
    worst = worst_case(model, x[:n], y[:n], spec_.eval_eps, {f"pgd-{spec_.eval_steps}": correct[:n]},
                       seed=spec_.seed, skip=SWEEP_SKIP)
    radius = certify.dual_radius(DualModel(dual.standard, dual.robust, alpha), x, y)["radius"]
    return {"alpha": alpha, "sa": float(clean.float().mean()), "ra": ra, "ra_worst": worst["ra_worst"],
            "n_worst": n, "correct": {"clean": bits(clean), "pgd": bits(correct), "worst": worst["correct_worst"]},
            "broken_by_each": worst["broken_by_each"], "certified": certified(radius)}


def sweep(dual: DualModel, spec_: ex.ExperimentSpec, dev, progress: bool = True) -> dict:
    """`_alpha_point` at every alpha of `ALPHAS`."""
    from tqdm import tqdm

    cfg = settings(spec_.preset)
    points = [_alpha_point(dual, a, spec_, cfg, dev)
              for a in tqdm(ALPHAS, desc=f"alpha sweep of {spec_.name}", disable=not progress, leave=False)]
    dual.alpha = spec_.alpha if spec_.kind == "dual-moe" else PAPER_ALPHA
    return {"points": points, "n_sweep": len(_test(spec_, dev, cfg["n_sweep"])[2])}


def pair_sweep(robust_spec: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None,
               recompute: bool = False, progress: bool = True) -> dict:
    """The alpha sweep of the separately trained dual model: F_S the standard-trained MoE of the same seed (trained
    first if it has no checkpoint), F_R the RT-ER MoE `robust_spec`; stored beside F_R's metrics."""
    standard_spec = robust_spec.replace(method="standard")

    def compute(model, dev):
        standard = ex.trained_model(standard_spec, str(dev), root, progress=False).to(dev)
        out = sweep(DualModel(standard, model, PAPER_ALPHA), robust_spec, dev, progress)
        return {**out, "standard": {"name": standard_spec.name, "hash": standard_spec.hash,
                                    "model_sha256": ex.load(standard_spec, root)["model_sha256"]}}

    return ex.evaluation(robust_spec, _name(robust_spec, "pair-sweep", standard_spec), compute, device, root,
                         recompute, progress)


def joint_sweep(spec_: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
                progress: bool = True) -> dict:
    """The alpha sweep of JTDMoE's jointly trained pair (trained at `spec_.alpha`), stored beside its metrics."""
    return ex.evaluation(spec_, _name(spec_, "joint-sweep"), lambda model, dev: sweep(model, spec_, dev, progress),
                         device, root, recompute, progress)


def unit(spec_: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
         progress: bool = True, position: int = 0) -> dict:
    """One model and every evaluation of it: training with PGD evaluation, AutoAttack and the worst case over every
    attack, and this chapter's: `evaluate` for a network MoE, and the alpha sweep of a dual model (JTDMoE's own, and
    the separately trained pair's in the unit of its F_R, the RT-ER MoE with beta = 6 and a trained router)."""
    from .worstcase import worst_case_eval

    ex.get(spec_, device, root, recompute=recompute, progress=progress, position=position)
    worst_case_eval(spec_, device, root, progress=progress)
    if spec_.kind == "dual-moe":
        return joint_sweep(spec_, device, root, progress=progress)
    out = evaluate(spec_, device, root, progress=progress)
    if spec_ == model_spec(spec_.preset, PAIR[1], spec_.seed):
        pair_sweep(spec_, device, root, progress=progress)
    return out


def precompute(preset: str, device: str = "cpu", jobs: int = 1, progress: bool = True, specs: list | None = None,
               on_done=None) -> None:
    """Train and evaluate every model of `book_plan` (or `specs`) that is not stored yet, `jobs` at a time: the
    standard MoEs first (each is the F_S its seed's pair sweep reads; `get_many` starts the longest units first)."""
    specs = book_plan(preset) if specs is None else specs
    first = [s for s in specs if s.method == "standard"]
    for stage in (first, [s for s in specs if s not in first]):
        if stage:
            ex.get_many(stage, device, progress=progress, jobs=jobs, task=unit, on_done=on_done)


# The paper's numbers (facts file Sec. 3; only its RT-ER row is public): RT-ER MoE on CIFAR-10, 4 ResNet-18 experts,
# top-1, beta = 6, PGD-50 at eps 8/255, in %; AutoAttack's row has its own SA. The vulnerability analysis is known
# only as "RA-R > 50%, RA-E < 4%" (the first author's blog; which training, not said).
PAPER_RT_ER = {"sa": 77.81, "ra": 69.09, "ra_e": 75.71, "ra_r": 72.28, "ra_aa": 54.36, "sa_aa": 75.92}


def records(preset: str, device: str = "cpu", recompute: bool = False, seeds: tuple[int, ...] | None = None,
            models: dict | None = None) -> list[dict]:
    """One record per model (`MODELS`, or `models`) and seed (`book_seeds`, or `seeds`): its metrics with RA-AA and
    the worst case (`report.with_autoattack`), this chapter's evaluation ("chapter", for a network MoE) and alpha
    sweep ("sweep": JTDMoE's own, the pair's in the record of its F_R). Missing units are computed."""
    from .report import with_autoattack

    out = []
    for label in (MODELS if models is None else models):
        for seed in book_seeds(preset) if seeds is None else seeds:
            s = model_spec(preset, label, seed)
            unit(s, device, recompute=recompute, progress=False)
            rec = with_autoattack([dict(label=label, seed=seed, metrics=ex.load(s), spec=s)], device, False)[0]
            if s.kind == "dual-moe":
                rec["sweep"] = joint_sweep(s, device, progress=False)
            else:
                rec["chapter"] = evaluate(s, device, progress=False)
                if label == PAIR[1]:
                    rec["sweep"] = pair_sweep(s, device, progress=False)
            out.append(rec)
    return out


def ablation_records(preset: str, device: str = "cpu", recompute: bool = False) -> list[dict]:
    """`records` of the ablations (`ABLATIONS`), the preset's first seed; none while they are not in the book."""
    if not book_ablations(preset):
        return []
    return records(preset, device, recompute, seeds=ex.preset_seeds(preset)[:1], models=ABLATIONS)


TINY_PIXELS, TINY_TRAIN = 4, 50_000  # Tiny-ImageNet against CIFAR: 64 x 64 images (4x the pixels), 200 x 250 images


def tiny_imagenet(preset: str) -> dict:
    """The paper's second dataset. paper: its experts are timm's pretrained ViT-small (vit_small_patch16_224, 224 px),
    downloaded at run time: refused here in one line (offline; advmoe has no ViT). Otherwise: what ResNet experts on
    the shared copy would cost at the cpu preset's width and epochs, per seed: its measured training minutes
    (`benchmarks/dual_cost.py`) times 4 (the pixels) times the training images over its 5,000; estimated, not run."""
    if preset == "paper":
        raise ValueError("the dual-model paper's Tiny-ImageNet experts are timm's pretrained vit_small_patch16_224, "
                         "downloaded at run time: this machine is offline and advmoe has no ViT; run the paper's "
                         "Tiny-ImageNet column with the authors' timm setup on a connected GPU machine")
    stored = read_json(REPO / "results" / "bench" / "dual-model-cost-cpu.json")
    if stored is None:
        raise FileNotFoundError("no measured cost of the cpu preset: run python benchmarks/dual_cost.py --preset cpu")
    factor = TINY_PIXELS * TINY_TRAIN / settings("cpu")["spec"]["train_subset"]
    minutes = {r["model"]: r["idle_training_minutes"] * factor for r in stored["rows"]}
    return {"factor": factor, "training_minutes": minutes, "per_seed_hours": sum(minutes.values()) / 60}


def tiny_imagenet_note(preset: str) -> str:
    """One paragraph for a page: what Tiny-ImageNet would cost at `preset` (or why it cannot run)."""
    try:
        cost = tiny_imagenet(preset)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    per_model = ", ".join(f"{m} {v / 60:.1f} h" for m, v in cost["training_minutes"].items())
    return (f"Tiny-ImageNet at the cpu preset's width and epochs: {cost['factor']:.0f}x the cost per epoch of its "
            f"CIFAR-10 subset; training alone {per_model}: {cost['per_seed_hours']:.0f} worker-hours per seed, "
            f"{3 * cost['per_seed_hours']:.0f} for 3 seeds, before any evaluation.")


def components(records: list[dict]):
    """One row per (model, seed): SA, RA (PGD on the whole MoE), RA-E, RA-R, RA-AA and the worst case, in %."""
    import pandas as pd

    return pd.DataFrame([dict(model=r["label"], seed=r["seed"], SA=100 * f["sa"], RA=100 * f["ra"],
                              **{"RA-E": 100 * r["chapter"]["components"]["experts"]["ra"],
                                 "RA-R": 100 * r["chapter"]["components"]["router"]["ra"],
                                 "RA-AA": 100 * f["ra_aa"], "RA worst case": 100 * f["ra_worst"]})
                         for r in records if "chapter" in r for f in [r["metrics"]["final"]]])


def routing_note(records: list[dict], short: bool = False) -> str:
    """One paragraph for a page: how each model's router spreads the clean test images over its experts, and, where
    every model sends (nearly) all of them to one expert, what that means for RA-E and D1. short: only that last
    point, in one sentence for the verdict box ("" where the routers use their experts)."""
    rows = [(r["label"], r["seed"], r["chapter"]["routing"]) for r in records if "chapter" in r]
    if not rows:
        return ""
    share = [max(h) / max(1, sum(h)) for _, _, h in rows]
    if short:
        return ("**Read D1 with care:** every router here sends (nearly) all clean test images to a single expert, so "
                "each MoE is in effect one network and D1 holds trivially (see where the router sends the images, "
                "below)." if min(share) >= 0.99 else "")
    text = ("**Where the router sends the clean test images** (images per expert): " +
            "; ".join(f"{label} seed {seed}: {h}" for label, seed, h in rows) + ".")
    if min(share) >= 0.99:
        most = "every one" if min(share) == 1 else f"at least {100 * min(share):.1f}%"
        text += (f" Every model sends {most} of them to a single expert: the router has "
                 "collapsed onto one expert, as a top-1 router without a balancing loss may (neither the paper nor "
                 "its code has one), and each MoE is in effect one ResNet-18 behind a router that rarely changes its "
                 "choice. Its RA-E then equals its RA, and D1's comparison is between that one network and a router "
                 "whose choice an attack seldom moves: true here, but not the experts-against-router contrast of an "
                 "MoE that uses its experts.")
    return text


def summary(table, paper_row: str | None = "RT-ER MoE"):
    """Per model (from `components`): mean ± SD over seeds of each column, the paper's RT-ER numbers in brackets."""
    import pandas as pd

    from .report import _mean_std, beside

    paper_ = {"SA": PAPER_RT_ER["sa"], "RA": PAPER_RT_ER["ra"], "RA-E": PAPER_RT_ER["ra_e"],
              "RA-R": PAPER_RT_ER["ra_r"], "RA-AA": PAPER_RT_ER["ra_aa"]}
    rows = []
    for model, g in table.groupby("model", sort=False):
        row = {"model": model, "seeds": len(g)}
        for col in ("SA", "RA", "RA-E", "RA-R", "RA-AA", "RA worst case"):
            row[f"{col} %"] = beside(*_mean_std(list(g[col])), paper_.get(col) if model == paper_row else None)
        rows.append(row)
    return pd.DataFrame(rows)


def point(record: dict, alpha: float) -> dict:
    """A metrics-like dict (`report.verdict` reads it) of a record's sweep at `alpha`."""
    p = next(p for p in record["sweep"]["points"] if abs(p["alpha"] - alpha) < 1e-9)
    return {"final": {"sa": p["sa"], "ra": p["ra"], "ra_worst": p["ra_worst"], "n_test": len(p["correct"]["pgd"]),
                      "n_ra_worst": p["n_worst"], "correct": p["correct"]}}


def curves(records: list[dict]):
    """Long format for the alpha figure: one row per (dual model, seed, alpha, metric), the value in %. The worst case
    is computed on the first n_worst of the sweep's images, so RA-PGD on those same images stands beside it (the
    worst case never exceeds it; RA-PGD on all the images can be lower)."""
    import pandas as pd

    which = {PAIR[1]: "separately trained (ST MoE + RT-ER MoE)", "JTDMoE": "JTDMoE (jointly trained)"}

    def values(p: dict) -> dict:  # the worst case runs on the first n_worst images: PGD on those too, to compare
        pgd_there = p["correct"]["pgd"][:p["n_worst"]]
        return {"SA": p["sa"], "RA-PGD": p["ra"], "RA-PGD (worst-case images)": pgd_there.count("1") / len(pgd_there),
                "RA worst case": p["ra_worst"]}

    return pd.DataFrame([dict(model=which[r["label"]], seed=r["seed"], alpha=p["alpha"], metric=name, value=100 * v)
                         for r in records if "sweep" in r for p in r["sweep"]["points"] for name, v in values(p).items()])


def certified_table(records: list[dict]):
    """One row per (model, seed, alpha or "-", eps in 1/255): the fraction of test images certified at that radius,
    in %, and the median and largest radius of the model (in 1/255)."""
    import pandas as pd

    rows = []
    for r in records:
        if "chapter" in r:
            c = r["chapter"]["certified"]
            rows += [dict(model=r["label"], seed=r["seed"], alpha="-", eps=float(e[:-4]), certified=100 * v,
                          median_radius=255 * c["median"], max_radius=255 * c["max"]) for e, v in c["fraction"].items()]
        for p in r.get("sweep", {}).get("points", []):
            c = p["certified"]
            which = "dual (separately trained)" if r["label"] == PAIR[1] else "dual (JTDMoE)"
            rows += [dict(model=which, seed=r["seed"], alpha=p["alpha"], eps=float(e[:-4]), certified=100 * v,
                          median_radius=255 * c["median"], max_radius=255 * c["max"]) for e, v in c["fraction"].items()]
    return pd.DataFrame(rows)


def certified_note(records: list[dict]) -> str:
    """One sentence for the certified-radius page: vacuous at every eps (with how far the largest radius is from
    8/255), or the largest certified fraction at each eps."""
    cert = certified_table(records)
    if cert.empty:
        return "No certified radius is stored at this preset."
    largest = cert.max_radius.max()
    if (cert.certified == 0).all():
        return (f"The bound is vacuous here: no test image of any model, seed or alpha is certified at any eps down "
                f"to {min(cert.eps):g}/255; the largest radius of any image is {largest:.3g}/255, "
                f"{8 / largest:.3g} times smaller than 8/255." if largest > 0 else
                "The bound is vacuous here: every certified radius is 0.")
    best = cert.groupby("eps").certified.max()
    return ("Largest fraction of test images certified by any model, seed or alpha: " +
            ", ".join(f"{v:.1f}% at {e:g}/255" for e, v in best.items()) + f"; the largest radius {largest:.3g}/255.")


def certified_verdict(records: list[dict], preset: str):
    """D5: is the certified radius non-trivial at 8/255? The bound is computed, not sampled: per model and seed, the
    fraction of test images certified at 8/255. Reproduced if every seed of the RT-ER MoE and of both dual models
    at alpha 0.7 certifies some image; not reproduced if none certifies any and the largest radius of any test image
    is below 8/255; inconclusive otherwise (some seeds do, some do not)."""
    from .report import Verdict

    claim = "D5: the certified radius is non-trivial at eps 8/255: some test images certified"
    found = [(f"{r['label']} s{r['seed']}", r["chapter"]["certified"]) for r in records
             if r["label"] == PAIR[1] and "chapter" in r]
    found += [(f"dual {r['label']} s{r['seed']}", p["certified"]) for r in records if "sweep" in r
              for p in r["sweep"]["points"] if abs(p["alpha"] - PAPER_ALPHA) < 1e-9]
    if not found:
        return Verdict(claim, "not run", None, None, "no results at this preset")
    at8 = [c["fraction"]["8/255"] for _, c in found]
    largest = max(c["max"] for _, c in found)
    status = ("reproduced" if all(f > 0 for f in at8) else
              "not reproduced" if not any(at8) and largest < 8 / 255 else "inconclusive")
    return Verdict(claim, status, 100 * sum(at8) / len(at8), None,
                   f"{preset} preset, {len(found)} models x seeds (RT-ER MoE, dual models at alpha 0.7): certified at "
                   f"8/255 {100 * min(at8):.1f}-{100 * max(at8):.1f}% of test images; the largest radius of any image "
                   f"{255 * largest:.3g}/255 ({largest / (8 / 255):.2g} of 8/255)", gap_name="certified %")


def verdicts(records: list[dict], preset: str, only: tuple[str, ...] | None = None) -> list:
    """D1-D5 of the claims ledger (`only` these ids: a page decides its own), by `report.verdict` (seeds paired, test
    images paired where both sides stored per-image results on the same images); D2-D4 also under the worst case."""
    from .report import per_image, verdict

    of = lambda label: [r for r in records if r["label"] == label]
    part = lambda label, target: [per_image(r["chapter"]["components"][target]["correct"]) for r in of(label)]
    metrics = lambda label: [r["metrics"] for r in of(label)]
    at = lambda label, alpha: [point(r, alpha) for r in of(label) if "sweep" in r]
    pair = PAIR[1]
    found = [
        *[verdict(f"D1: the experts are more vulnerable than the router: RA-R > RA-E ({label})",
                  part(label, "router"), part(label, "experts"), "v", preset) for label in ("ST MoE", "AT MoE")],
        verdict("D2: RT-ER is more robust than PGD-AT of the MoE: RT-ER MoE RA > AT MoE RA", metrics("RT-ER MoE"),
                metrics("AT MoE"), "ra", preset, also="ra_worst"),
        verdict("D3: raising alpha lowers SA: SA at alpha 0 > alpha 0.7 (separately trained)", at(pair, 0.0),
                at(pair, 0.7), "sa", preset),
        verdict("D3: ... SA at alpha 0.7 > alpha 1", at(pair, 0.7), at(pair, 1.0), "sa", preset),
        verdict("D3: raising alpha raises RA: RA at alpha 0.7 > alpha 0 (separately trained)", at(pair, 0.7),
                at(pair, 0.0), "ra", preset, also="ra_worst"),
        verdict("D3: ... RA at alpha 1 > alpha 0.7", at(pair, 1.0), at(pair, 0.7), "ra", preset, also="ra_worst"),
        verdict("D4: JTDMoE beats the separately trained dual model at alpha 0.7 on SA", at("JTDMoE", 0.7),
                at(pair, 0.7), "sa", preset),
        verdict("D4: ... on RA", at("JTDMoE", 0.7), at(pair, 0.7), "ra", preset, also="ra_worst"),
        certified_verdict(records, preset),
    ]
    return [v for v in found if only is None or v.claim.split(":")[0] in only]


# The paper's claims (its abstract; the facts file's Sec. 4), each decided by the verdicts of the pages that test it:
# (page notebook, the verdict's claim prefix, the authors' numbers for it).
CLAIMS = [
    dict(id="D1", source="abstract; the first author's blog (RA-R > 50%, RA-E < 4%, CIFAR-10)",
         covered_by=[("dm_vulnerability", "D1:", "RA-R > 50% vs RA-E < 4%")],
         text="The experts of an MoE are far more vulnerable than its router."),
    dict(id="D2", source="abstract; their RT-ER table (AT's numbers not public)",
         covered_by=[("dm_rt_er", "D2:", f"RT-ER {PAPER_RT_ER['ra']:g}% (PGD-50); AT ~54% (blog)")],
         text="RT-ER (robustifying one more expert per sample) makes the MoE more robust than adversarial training "
              "of the MoE, at similar clean accuracy."),
    dict(id="D3", source="abstract (the alpha sweep's numbers are not public)",
         covered_by=[("dm_alpha", "D3:")],
         text="The dual model's alpha trades accuracy for robustness: raising it lowers SA and raises RA."),
    dict(id="D4", source="abstract (JTDMoE's numbers are not public)",
         covered_by=[("dm_jtdmoe", "D4:")],
         text="Joint training (JTDMoE) beats the separately trained dual model on both accuracy and robustness."),
    dict(id="D5", source="abstract; Theorems 5.4 and 5.5 (never evaluated numerically in the paper)",
         covered_by=[("dm_certified", "D5:")],
         text="The certified robustness bounds of the single MoE and the dual model are non-trivial at eps 8/255."),
]
