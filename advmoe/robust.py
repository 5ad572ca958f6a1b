"""The Robust Experts chapter (Pavlitska et al., 2025: one sparse MoE layer in a deep ResNet stage, adversarial
training, balancing losses, experts that beat their gate): its presets, its specs, and the evaluation every one of
its models gets beside its metrics (`evaluate`, stored as robust-experts-*.json).

What is known of the paper and the authors' code: ../shared/papers/robust-experts-2025-facts.md. Where the two
disagree the `paper` preset follows the paper (lr 0.01, 200 epochs); the models and training are
`advmoe.models.topk` and the `pgd-at` method of `advmoe.train`.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from . import data as datalib
from . import experiments as ex
from .attacks import pgd
from .evaluate import accuracy, robust_accuracy
from .io import bits
from .models import forced_expert, moe_layers, record_routing
from .worstcase import apgd
from . import robust_paper

AUTOPGD_ITERATIONS = 20  # the authors' "AutoPGD": torchattacks APGD, CE, 20 steps, one restart (their src/run.py)


def settings(preset: str) -> dict:
    """The spec fields this chapter's preset sets (the rest are ExperimentSpec defaults), and its evaluation sizes.

    paper: the paper's protocol as far as it is known (facts file Sec. 4): CIFAR-100, ResNet-18 (width 64), N = 4,
    200 epochs, SGD lr 0.01 (the paper; the code's 0.1 was never overridden in their sweeps), momentum 0.9, weight
    decay 5e-4 (their Nesterov momentum is not reproduced), the poly schedule, batch 640 (their data config), PGD-7
    training attack at eps 8/255, step 2/255; evaluation PGD-20 (step 2/255, random start) and APGD-CE-20 on the
    full test set. cpu: the CIFAR-10 JPEG copy (no CIFAR-100 here), width 16, 5,000 training and 1,000 test images
    and 8 epochs as the AdvMoE cpu preset, and lr 0.1, the rate the authors' code ran with (their sweep scripts never
    set the paper's 0.01). One epoch of PGD-7 AT there: `benchmarks/robust_cost.py` times it for every verdict model.
    """
    common = dict(n_experts=4, schedule="poly", train_steps=7, train_step_size=2 / 255, train_eps=8 / 255,
                  eval_eps=8 / 255, eval_step_size=2 / 255, eval_steps=20)
    if preset == "smoke":
        return dict(spec={**common, "dataset": "cifar10-jpeg", "base_width": 8, "epochs": 2, "batch_size": 32,
                          "train_subset": 128, "test_subset": 32, "eval_steps": 5, "train_steps": 2, "lr": 0.1},
                    n_forced=16, n_traffic=32)
    if preset == "cpu":
        return dict(spec={**common, "dataset": "cifar10-jpeg", "base_width": 16, "epochs": 8, "batch_size": 128,
                          "train_subset": 5_000, "test_subset": 1_000, "lr": 0.1},
                    n_forced=500, n_traffic=1_000)
    if preset == "paper":
        return dict(spec={**common, "dataset": "cifar100", "base_width": 64, "epochs": 200, "batch_size": 640,
                          "train_subset": None, "test_subset": None, "lr": 0.01},
                    n_forced=None, n_traffic=10_000)
    raise ValueError(f"the Robust Experts chapter has no preset {preset!r}; allowed: smoke, cpu, paper")


def describe(preset: str) -> str:
    """One line for a page: what the preset trains and how it attacks."""
    cfg = settings(preset)
    s = cfg["spec"]
    images = lambda n, what: f"{n:,} {what} images" if n else f"every {what} image"
    return (f"{preset} preset: ResNet-18 of width {s['base_width']} on {s['dataset']} "
            f"({images(s['train_subset'], 'training')}), {s['epochs']} epochs of PGD-{s['train_steps']} adversarial "
            f"training (eps 8/255, step 2/255), N = {s['n_experts']} experts; evaluated on "
            f"{images(s['test_subset'], 'test')} with PGD-{s['eval_steps']}, APGD-CE-{AUTOPGD_ITERATIONS}, and the "
            f"worst case over every attack on {images(ex.autoattack_settings(preset)[1], 'test')} (the AutoAttack "
            f"images); forced experts on {images(cfg['n_forced'], 'test')}.")


def spec(preset: str, kind: str, method: str = "pgd-at", seed: int = 0, **fields) -> ex.ExperimentSpec:
    """A model of this chapter: kind "dense" (the baseline), "block-moe" or "conv-moe"; method "pgd-at" or
    "standard"; fields: placement, gate, top_k, balancing, n_experts, ... (the preset's values otherwise)."""
    if kind not in ("dense", "block-moe", "conv-moe"):
        raise ValueError(f"this chapter's models are dense, block-moe or conv-moe, not {kind!r}")
    values = {**settings(preset)["spec"], **fields, "seed": seed}
    if kind == "dense":  # the MoE fields mean nothing to the baseline: their defaults keep its name and hash plain
        values = {k: v for k, v in values.items() if k not in ("n_experts", "placement", "gate", "top_k", "balancing")}
    return ex.ExperimentSpec(preset=preset, kind=kind, method=method, scale=1.0, **values)


def collapse(counts: list[int]) -> dict:
    """How unevenly a layer's samples are spread over its experts: the largest share, and the usage entropy in
    bits against its maximum log2(N) (balanced use) and 0 (every sample on one expert)."""
    total = sum(counts)
    shares = [c / total for c in counts] if total else [0.0] * len(counts)
    entropy = -sum(p * math.log2(p) for p in shares if p > 0)
    return {"largest_share": max(shares), "entropy_bits": entropy, "max_bits": math.log2(len(counts))}


def _name(spec_: ex.ExperimentSpec) -> str:
    cfg = settings(spec_.preset)
    key = json.dumps({"autopgd": AUTOPGD_ITERATIONS, "n_forced": cfg["n_forced"], "n_traffic": cfg["n_traffic"]},
                     sort_keys=True)
    return f"robust-experts-{hashlib.sha256(key.encode()).hexdigest()[:8]}.json"


def evaluate(spec_: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
             progress: bool = True, position: int = 0) -> dict:
    """The chapter's evaluation of a trained model, stored beside its metrics (computed if missing):

    - autopgd: RA under APGD-CE with 20 iterations and one restart, in eval mode (the authors ran theirs with the
      model left in train mode: facts file B5), on the experiment's test images, per image;
    - forced: per MoE layer and expert, every sample sent to that expert in that layer (the others route as
      usual): clean accuracy and RA under PGD (the preset's steps, random start) crafted on that pathway, on the
      first `n_forced` test images;
    - usage: per MoE layer, how many samples each expert receives on clean test images, on their PGD examples
      (the real model's), and on adversarial training images (the training attack on the first `n_traffic`
      training images, in eval mode): the trained model's routing of the traffic it was trained on.
    """
    cfg = settings(spec_.preset)

    def compute(model, dev):
        test = datalib.load(spec_.dataset, "test", subset=spec_.test_subset, seed=ex.SUBSET_SEED)
        x, y = datalib.to_float(test.images, dev), test.labels.to(dev)
        generator = torch.Generator(dev).manual_seed(spec_.seed)
        out = {"autopgd": _autopgd(model, x, y, spec_), "n_test": len(y)}
        layers = moe_layers(model)
        if not layers:
            return out
        forced_data = test.subset(cfg["n_forced"], ex.SUBSET_SEED) if cfg["n_forced"] else test
        forced = {}
        for name, layer in layers.items():
            for e in range(layer.n_experts):
                adv = []
                with forced_expert(model, e, name):
                    ra = robust_accuracy(model, forced_data, dev, spec_.eval_eps, spec_.eval_step_size,
                                         spec_.eval_steps, seed=spec_.seed, progress=False, per_example=adv)
                    sa = accuracy(model, forced_data, dev, progress=False)
                forced.setdefault(name, {})[str(e)] = {"sa": sa, "ra": ra, "correct": bits(torch.cat(adv))}
        out["forced"], out["n_forced"] = forced, len(forced_data)
        train = datalib.load(spec_.dataset, "train", subset=spec_.train_subset, seed=ex.SUBSET_SEED)
        train = train.subset(min(cfg["n_traffic"], len(train)), ex.SUBSET_SEED)
        xt, yt = datalib.to_float(train.images, dev), train.labels.to(dev)
        inputs = {"clean": (x, y), "adversarial": (_pgd(model, x, y, spec_, generator), y),
                  "training": (_pgd(model, xt, yt, spec_, generator, training=True), yt)}
        out["usage"] = {kind: _usage(model, xi) for kind, (xi, _) in inputs.items()}
        out["n_traffic"] = len(yt)
        return out

    return ex.evaluation(spec_, _name(spec_), compute, device, root, recompute, progress)


def _autopgd(model, x, y, spec_, batch_size: int = 250) -> dict:
    correct = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = apgd(model, xb, yb, spec_.eval_eps, loss="ce", seed=spec_.seed, iterations=AUTOPGD_ITERATIONS)
        with torch.no_grad():
            correct.append((model.eval()(x_adv).argmax(1) == yb).cpu())
    correct = torch.cat(correct)
    return {"ra": float(correct.float().mean()), "iterations": AUTOPGD_ITERATIONS, "correct": bits(correct)}


def _pgd(model, x, y, spec_, generator, training: bool = False, batch_size: int = 250) -> torch.Tensor:
    """The evaluation PGD's examples (training=False) or the training attack's (last iterate), in batches."""
    steps, step = (spec_.train_steps, spec_.train_step_size) if training else (spec_.eval_steps, spec_.eval_step_size)
    eps = spec_.train_eps if training else spec_.eval_eps
    return torch.cat([pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps, step, steps, generator=generator,
                          last_iterate=training) for i in range(0, len(x), batch_size)])


def _usage(model, x: torch.Tensor, batch_size: int = 250) -> dict[str, list[int]]:
    model.eval()
    with torch.no_grad(), record_routing(model) as routes:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    return routes.histogram()


# The models the verdicts compare, each trained with every seed of the preset (cpu: 3), all with PGD-AT: the dense
# baseline, and BlockMoEs with the authors' defaults (N = 4, GAP-FC gate, the code's entropy loss, k = 1) in one
# block of conv5_x (layer4.1: the paper's single deep MoE layer), in the same block of conv4_x (layer3.1), with the
# switch loss, and with k = 2.
VERDICT_MODELS = {
    "AT (Dense)": ("dense", {}),
    "BlockMoE, layer4.1": ("block-moe", dict(placement="layer4.1")),
    "BlockMoE, layer3.1": ("block-moe", dict(placement="layer3.1")),
    "BlockMoE, layer4.1, switch": ("block-moe", dict(placement="layer4.1", balancing="switch")),
    "BlockMoE, layer4.1, k = 2": ("block-moe", dict(placement="layer4.1", top_k=2)),
}


# The rest of the grid, trained with the preset's first seed only and plotted, never decided on: the authors' T1
# configurations on both conv5_x blocks (BlockMoE, and the ConvMoE of their best PGD row), the Conv-GAP gate, the
# paper's printed loss (column entropy) and none, the 1st-block placements of T3, the configuration of their
# fixed-expert figure (switch loss, Conv-GAP), and standard training (no robustness without AT, their claim 3).
GRID_MODELS = {
    "BlockMoE, layer4 (both blocks)": ("block-moe", dict(placement="layer4")),
    "ConvMoE, layer4 (5 convs)": ("conv-moe", dict(placement="layer4")),
    "BlockMoE, layer4.1, Conv-GAP": ("block-moe", dict(placement="layer4.1", gate="conv-gap")),
    "BlockMoE, layer4.1, switch, Conv-GAP": ("block-moe", dict(placement="layer4.1", gate="conv-gap",
                                                              balancing="switch")),
    "BlockMoE, layer4.1, column entropy": ("block-moe", dict(placement="layer4.1", balancing="column-entropy")),
    "BlockMoE, layer4.1, no balancing": ("block-moe", dict(placement="layer4.1", balancing="none")),
    "BlockMoE, layer4.0": ("block-moe", dict(placement="layer4.0")),
    "BlockMoE, layer3.0": ("block-moe", dict(placement="layer3.0")),
    "Dense, standard training": ("dense", dict(method="standard")),
    "BlockMoE, layer4.1, standard training": ("block-moe", dict(placement="layer4.1", method="standard")),
}


def plan(preset: str, grid: bool = False) -> list[ex.ExperimentSpec]:
    """Every model this chapter's verdicts read, first seeds first (so a partial run covers every model once); with
    `grid`, then the rest of the grid (`GRID_MODELS`, the preset's first seed)."""
    verdict = [spec(preset, kind, seed=seed, **fields) for seed in ex.preset_seeds(preset)
               for kind, fields in VERDICT_MODELS.values()]
    return verdict + ([spec(preset, kind, seed=ex.preset_seeds(preset)[0], **fields)
                       for kind, fields in GRID_MODELS.values()] if grid else [])


def unit(spec_: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
         progress: bool = True, position: int = 0) -> dict:
    """One model and every evaluation of it: training with PGD evaluation, AutoAttack and the worst case over every
    attack (the book's headline), and this chapter's evaluation (`evaluate`)."""
    from .worstcase import worst_case_eval

    ex.get(spec_, device, root, recompute=recompute, progress=progress, position=position)
    worst_case_eval(spec_, device, root, progress=progress)
    return evaluate(spec_, device, root, progress=progress)


def precompute(preset: str, device: str = "cpu", jobs: int = 1, progress: bool = True, specs: list | None = None,
               on_done=None) -> None:
    """Train and evaluate every model of `plan`, the grid included (or `specs`), that is not stored yet, `jobs` at a
    time."""
    specs = plan(preset, grid=True) if specs is None else specs
    ex.get_many(specs, device, progress=progress, jobs=jobs, task=unit, on_done=on_done)


def paper_of(spec_: ex.ExperimentSpec) -> tuple[float, float, float] | None:
    """The authors' (clean, PGD-20, APGD-CE-20) in % for the configuration of a spec (their CIFAR-100 grids,
    `robust_paper`), None where they ran none like it (e.g. k = 2 in one block: their k grid is on both blocks)."""
    if spec_.kind == "dense":
        return robust_paper.value("dense", spec_.method)
    return robust_paper.value(spec_.kind, spec_.method, spec_.placement, spec_.balancing, spec_.gate, spec_.top_k)


def paper(label: str) -> tuple[float, float, float] | None:
    """`paper_of` a verdict model, by its label."""
    kind, fields = VERDICT_MODELS[label]
    return paper_of(spec("cpu", kind, **fields))


def paper_k(k: int) -> tuple[float, float, float]:
    """The authors' BlockMoE on both layer4 blocks (T1), L_ent, GAP-FC, with top-k = k, adversarially trained."""
    return robust_paper.value("block-moe", "pgd-at", "layer4", "entropy", "gap-fc", k)


def records(preset: str, device: str = "cpu", recompute: bool = False, seeds: tuple[int, ...] | None = None,
            models: dict | None = None) -> list[dict]:
    """One record per model (`VERDICT_MODELS`, or `models`) and seed (the preset's, or `seeds`): its metrics, with
    RA-AA and the worst case (`report.with_autoattack`) and the authors' AutoPGD (APGD-CE-20) added to its final
    metrics, and this chapter's evaluation (`evaluate`). Missing units are computed."""
    from .report import with_autoattack

    out = []
    for label, (kind, fields) in (VERDICT_MODELS if models is None else models).items():
        for seed in ex.preset_seeds(preset) if seeds is None else seeds:
            s = spec(preset, kind, seed=seed, **fields)
            unit(s, device, recompute=recompute, progress=False)
            rec = with_autoattack([dict(label=label, seed=seed, metrics=ex.load(s), spec=s)], device, False)[0]
            chapter = evaluate(s, device, progress=False)
            final = rec["metrics"]["final"]
            final.update(autopgd=chapter["autopgd"]["ra"], n_autopgd=chapter["n_test"],
                         correct={**final["correct"], "autopgd": chapter["autopgd"]["correct"]})
            out.append({**rec, "chapter": chapter})
    return out


def grid_records(preset: str, device: str = "cpu", recompute: bool = False) -> list[dict]:
    """`records` of the rest of the grid (`GRID_MODELS`), the preset's first seed: plotted, never decided on."""
    return records(preset, device, recompute, seeds=ex.preset_seeds(preset)[:1], models=GRID_MODELS)


def versus_authors(records: list[dict]):
    """One row per model the authors ran too: our SA and RA-PGD (mean over its seeds) beside their clean and PGD-20
    accuracy (CIFAR-100), in %."""
    import pandas as pd

    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        done = [r for r in records if r["label"] == label]
        theirs = paper_of(done[0]["spec"])
        if theirs is not None:
            mean = lambda key: sum(100 * r["metrics"]["final"][key] for r in done) / len(done)
            rows.append(dict(model=label, seeds=len(done), training=done[0]["spec"].method, our_sa=mean("sa"),
                             our_ra=mean("ra"), their_clean=theirs[0], their_pgd=theirs[1]))
    return pd.DataFrame(rows)


def _moe_layer(record: dict) -> str | None:
    """The MoE layer of a verdict model (each has one), None for the dense baseline."""
    return next(iter(record["chapter"].get("forced", {})), None)


def summary(records: list[dict]):
    """One row per model of the records: SA, RA-PGD, AutoPGD (APGD-CE-20) and the worst case, ours (mean ± SD over
    seeds) with the authors' CIFAR-100 number in brackets (a reference for direction only: another dataset, scale)."""
    import pandas as pd

    from .report import _mean_std, beside

    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        done = [r["metrics"]["final"] for r in records if r["label"] == label]
        paper_ = paper_of(next(r["spec"] for r in records if r["label"] == label)) or (None, None, None)
        row = {"model": label, "seeds": len(done)}
        for name, key, p in (("SA %", "sa", paper_[0]), ("RA-PGD %", "ra", paper_[1]),
                             ("AutoPGD %", "autopgd", paper_[2]), ("RA worst case %", "ra_worst", None)):
            row[name] = beside(*_mean_std([100 * f[key] for f in done]), p) if done else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def experts(records: list[dict]):
    """One row per (model, seed, MoE layer, expert): its share of the adversarial training traffic, and its forced
    pathway's clean accuracy and RA-PGD (in %), beside the gated model's RA-PGD on the experiment's test images."""
    import pandas as pd

    rows = []
    for r in records:
        for layer, experts_ in r["chapter"].get("forced", {}).items():
            traffic = r["chapter"]["usage"]["training"][layer]
            for e, forced in experts_.items():
                rows.append(dict(model=r["label"], seed=r["seed"], layer=layer, expert=int(e),
                                 traffic=100 * traffic[int(e)] / sum(traffic), sa=100 * forced["sa"],
                                 ra=100 * forced["ra"], gated_ra=100 * r["metrics"]["final"]["ra"]))
    return pd.DataFrame(rows)


def usage(records: list[dict]):
    """One row per (model, seed, MoE layer, traffic: clean / adversarial / training): the collapse measures."""
    import pandas as pd

    rows = []
    for r in records:
        for traffic, counts in r["chapter"].get("usage", {}).items():
            for layer, c in counts.items():
                rows.append(dict(model=r["label"], seed=r["seed"], layer=layer, traffic=traffic, **collapse(c),
                                 counts=c))
    return pd.DataFrame(rows)


def scores(records: list[dict]):
    """Long format for the figures: one row per (model, seed, metric) with the value in %; metrics "SA", "RA-PGD",
    "AutoPGD" and "RA worst case"."""
    import pandas as pd

    names = {"sa": "SA", "ra": "RA-PGD", "autopgd": "AutoPGD", "ra_worst": "RA worst case"}
    return pd.DataFrame([dict(model=r["label"], seed=r["seed"], metric=name, value=100 * r["metrics"]["final"][key])
                         for r in records for key, name in names.items()])


def experts_summary(table):
    """Per model, seed and MoE layer (from `experts`): the gated model's RA-PGD, the forced RA of the layer's most-
    and least-used expert (by training traffic) and of its best expert, and how many experts beat the gated model,
    in %."""
    import pandas as pd

    rows = []
    for (model, seed, layer), g in table.groupby(["model", "seed", "layer"], sort=False):
        g = g.sort_values("traffic", ascending=False)
        rows.append({"model": model, "seed": seed, "layer": layer, "gated RA-PGD %": g.gated_ra.iloc[0],
                     "most-used expert: traffic %": g.traffic.iloc[0], "most-used: forced RA %": g.ra.iloc[0],
                     "least-used: forced RA %": g.ra.iloc[-1], "best forced RA %": g.ra.max(),
                     "experts beating the gate": f"{int((g.ra > g.gated_ra).sum())} of {len(g)}"})
    return pd.DataFrame(rows)


def usage_summary(table):
    """Per model, MoE layer and traffic (from `usage`): the largest expert share and the usage entropy, mean ± SD
    over seeds."""
    import pandas as pd

    from .report import _mean_std, fmt

    rows = []
    for (model, layer, traffic), g in table.groupby(["model", "layer", "traffic"], sort=False):
        rows.append({"model": model, "layer": layer, "traffic": traffic, "seeds": len(g),
                     "largest share %": fmt(*_mean_std(list(100 * g.largest_share)), 1),
                     "usage entropy (bits)": fmt(*_mean_std(list(g.entropy_bits))) + f" of {g.max_bits.iloc[0]:.0f}"})
    return pd.DataFrame(rows)


def authors_grid(training: str = "pgd-at"):
    """The authors' ResNet-18 grids (`robust_paper`: T1 and T3) for one training, one row per configuration."""
    import pandas as pd

    rows = [dict(moe=moe, placement=placement or "-", loss=loss or "-", gate=gate or "-", k=k or "-",
                 clean=v[0], PGD=v[1], AutoPGD=v[2])
            for (moe, placement, loss, gate, k, t), v in robust_paper.GRID.items() if t == training]
    return pd.DataFrame(rows)


def verdicts(records: list[dict], preset: str, only: tuple[str, ...] | None = None) -> list:
    """R1-R6 of the claims ledger (`only` these ids: a page decides its own), decided by `report.verdict` (seeds
    paired; test images paired where both sides are per-image results on the same images). R1, R2 and R6 also
    under the worst case."""
    from .report import per_image, verdict

    def of(label):
        return [r for r in records if r["label"] == label]

    def metrics(label):
        return [r["metrics"] for r in of(label)]

    def share(label):  # the largest expert's share of the training traffic: a share of n_traffic samples
        out = []
        for r in of(label):
            counts = r["chapter"]["usage"]["training"][_moe_layer(r)]
            out.append({"final": {"share": collapse(counts)["largest_share"], "n_test": r["chapter"]["n_traffic"]}})
        return out

    def expert(label, rank):  # the forced pathway of the expert with the rank-th largest training traffic
        out = []
        for r in of(label):
            layer = _moe_layer(r)
            traffic = r["chapter"]["usage"]["training"][layer]
            e = sorted(range(len(traffic)), key=lambda i: -traffic[i])[rank]
            out.append(per_image(r["chapter"]["forced"][layer][str(e)]["correct"]))
        return out

    gated = lambda label: [{"final": {"v": r["metrics"]["final"]["ra"], "n_test": r["metrics"]["final"]["n_test"]}}
                           for r in of(label)]
    deep, shallow, switch, k2 = ("BlockMoE, layer4.1", "BlockMoE, layer3.1", "BlockMoE, layer4.1, switch",
                                 "BlockMoE, layer4.1, k = 2")
    found = [
        verdict("R1: one MoE layer in conv5_x with AT beats the AT baseline: BlockMoE (layer4.1) RA > AT (Dense) RA",
                metrics(deep), metrics("AT (Dense)"), "ra", preset, also="ra_worst"),
        verdict("R1: ... under AutoPGD: BlockMoE (layer4.1) AutoPGD RA > AT (Dense) AutoPGD RA",
                metrics(deep), metrics("AT (Dense)"), "autopgd", preset),
        verdict("R2: the deeper placement is the more robust: BlockMoE layer4.1 RA > layer3.1 RA",
                metrics(deep), metrics(shallow), "ra", preset, also="ra_worst"),
        verdict("R3: the switch loss concentrates routing: largest expert share of the training traffic, switch > "
                "entropy loss", share(switch), share(deep), "share", preset),
        verdict("R4: the most-used expert becomes the most robust: forced RA, most-used expert > least-used expert "
                "(switch loss)", expert(switch, 0), expert(switch, -1), "v", preset),
        verdict("R5: a single expert beats its gate: forced RA of the most-used expert > the gated model's RA "
                "(switch loss)", expert(switch, 0), gated(switch), "v", preset),
        verdict("R6: k = 1 is the most robust k: BlockMoE (layer4.1) k = 1 RA > k = 2 RA", metrics(deep),
                metrics(k2), "ra", preset, also="ra_worst"),
    ]
    return [v for v in found if only is None or v.claim.split(":")[0] in only]


def _vs(a: str, b: str, column: int = 1) -> str:
    """The authors' two numbers a claim compares ("19.96% vs 16.87%"), from `paper` (column 1: PGD, 2: AutoPGD)."""
    return f"{paper(a)[column]:g}% vs {paper(b)[column]:g}%"


# The paper's claims (its abstract; the facts file's Sec. 6), each decided by the verdicts of the pages that test it:
# (page notebook, the verdict's claim prefix, the authors' numbers for it).
CLAIMS = [
    dict(id="R1", source="abstract; their T3 (conv5_x, 2nd block, L_ent, GAP-FC)",
         covered_by=[("re_grid", "R1: one MoE layer", _vs("BlockMoE, layer4.1", "AT (Dense)")),
                     ("re_grid", "R1: ... under AutoPGD", _vs("BlockMoE, layer4.1", "AT (Dense)", 2))],
         text="One sparse MoE layer in a deep ResNet stage, with adversarial training, is more robust than the "
              "adversarially trained dense ResNet under PGD and AutoPGD."),
    dict(id="R2", source="abstract; their T3 (2nd block, L_ent, GAP-FC)",
         covered_by=[("re_placement", "R2:", _vs("BlockMoE, layer4.1", "BlockMoE, layer3.1"))],
         text="The deeper placement (conv5_x) is more robust than the shallower one (conv4_x)."),
    dict(id="R3", source="abstract (their usage histograms are not published)",
         covered_by=[("re_collapse", "R3:")],
         text="The switch loss collapses routing onto a few experts; the entropy loss keeps usage balanced."),
    dict(id="R4", source="abstract (their per-expert numbers are in their W&B project only)",
         covered_by=[("re_experts", "R4:")],
         text="The experts that receive most of the adversarial training become the most robust."),
    dict(id="R5", source="abstract; their fixed-expert figure (numbers not published)",
         covered_by=[("re_experts", "R5:")],
         text="Some single experts, forced for every input, are more robust than the gated MoE."),
    dict(id="R6", source="their T1 (BlockMoE on both conv5_x blocks, L_ent, GAP-FC, k = 1 vs 2)",
         covered_by=[("re_grid", "R6:", f"{paper_k(1)[1]:g}% vs {paper_k(2)[1]:g}%")],
         text="k = 1 is the most robust top-k under adversarial training."),
]
