"""Inside the MoE-CNN (paper Sec. 4 and Sec. 5.2): what the pages for Fig. 3, Fig. 4/5 and Fig. 6 call.

Fig. 3: router-only AT (theta-bar) against M1-M3 at each model scale. Fig. 4/5: PGD's effect on routing and on
the prediction (`advmoe.dissect`) for theta-bar, theta-bar-bar, AT (MoE) and AdvMoE. Fig. 6: each input's pathway
against AT (Sparse)'s mask (`advmoe.pathways`), from the experts the dissection stored and the mask's kept channels.
Verdicts use the book's rule (`report.verdict`), paired by seed and by image; at the cpu preset the scale the
paper reports (r = 0.5) has the preset's seeds, the other scales only the first one (plotted, never decided).
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from . import experiments as ex
from . import paper
from .dissect import CATEGORIES
from .io import bits, from_bits, from_digits
from .models import create_model, moe_layers
from .pathways import iou, moe_pathways
from .report import Verdict, per_image, sec4_specs, verdict

PAPER_SCALES = [0.8, 0.5, 0.2]  # Fig. 3's model scales
VERDICT_SCALE = 0.5  # the scale of the paper's Sec. 4 numbers, and of Fig. 4-6
# The paper's θ̄ and θ̿ (its overline and double overline) look alike in many fonts and in plain text, so a word
# always stands beside the symbol: in labels, verdicts and captions they are these two names.
THETA_BAR, THETA_BARBAR = "θ̄ (routers AT)", "θ̿ (then backbone AT)"
FIG3 = {"M1": "M1: ST (MoE)", "theta-bar": "θ̄: AT on the routers only", "M2": "M2: AT (S-Dense)",
        "M3": "M3: HYDRA mask over ST (Dense)"}
PAPER_FIG3, PAPER_FIG4 = paper.FIG3_RA, paper.FIG4_SHARES  # Sec. 4 text, r = 0.5 (%): Fig. 3's RA, Fig. 4's shares


def scales(preset: str) -> list[float]:
    """The Fig. 3 page's default scale_grid at a preset: the paper's three (smoke: two, for speed)."""
    if preset not in ex.BOOK_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(ex.BOOK_PRESETS)}, got {preset!r}")
    return {"smoke": [0.5, 0.2], "cpu": PAPER_SCALES, "paper": PAPER_SCALES}[preset]


def seeds(preset: str, scale: float) -> tuple[int, ...]:
    """The seeds of a Sec. 4 model at `scale`: all of the preset's at the verdict scale (and at `paper`)."""
    every = ex.preset_seeds(preset)
    return every if scale == VERDICT_SCALE or preset == "paper" else every[:1]


def fig3(preset: str, device: str, recompute: bool, grid: list[float]):
    """RA and SA of M1, theta-bar, M2 and M3 at each scale of `grid` and seed; the verdicts at VERDICT_SCALE (when in
    the grid); the records."""
    import pandas as pd

    rows, records, by = [], [], {}
    for scale in grid:
        for seed in seeds(preset, scale):
            specs = sec4_specs(preset, scale, seed)
            for key, label in FIG3.items():
                m = ex.get(specs[key], device, recompute=recompute, progress=False)
                by.setdefault((key, scale), []).append(m)
                records.append(dict(label=label, seed=seed, scale=scale, metrics=m, spec=specs[key]))
                rows.append(dict(model=key, label=label, scale=scale, seed=seed, ra=100 * m["final"]["ra"],
                                 sa=100 * m["final"]["sa"], steps=specs[key].eval_steps))
    verdicts = []
    if VERDICT_SCALE in grid:
        get = lambda key: by[(key, VERDICT_SCALE)]
        r = f" (r = {VERDICT_SCALE:g})"
        verdicts = [verdict(f"Router-only AT raises RA: {THETA_BAR} RA > M1 RA" + r, get("theta-bar"), get("M1"),
                            preset=preset),
                    verdict(f"Router-only AT stays below AT (S-Dense): M2 RA > {THETA_BAR} RA" + r, get("M2"),
                            get("theta-bar"), preset=preset),
                    verdict(f"Router-only AT beats the robust mask: {THETA_BAR} RA > M3 RA" + r, get("theta-bar"),
                            get("M3"), preset=preset)]
    return pd.DataFrame(rows), verdicts, records


def dissected(preset: str, seed: int) -> dict:
    """The models Fig. 4/5 dissect (paper: theta-bar and theta-bar-bar; beyond it: AT (MoE) and AdvMoE), r = 0.5."""
    specs = sec4_specs(preset, VERDICT_SCALE, seed)
    return {THETA_BAR: specs["theta-bar"], THETA_BARBAR: specs["theta-bar-bar"],
            "AT (MoE)": ex.make_spec(preset, "moe", "at", VERDICT_SCALE, seed=seed),
            "AdvMoE": ex.make_spec(preset, "moe", "advmoe", VERDICT_SCALE, seed=seed)}


def dissections(preset: str, device: str, recompute: bool):
    """Per model and seed: the four shares (%), the per-layer change rates (%), the stored dissections."""
    import pandas as pd

    shares, layers, stored, records = [], [], {}, []
    for seed in ex.preset_seeds(preset):
        for label, spec in dissected(preset, seed).items():
            m = ex.get(spec, device, progress=False)
            d = ex.dissection(spec, device=device, recompute=recompute, progress=False)
            stored.setdefault(label, []).append(d)
            records.append(dict(label=label, seed=seed, metrics=m, spec=spec))
            shares += [dict(model=label, seed=seed, category=c, share=100 * v) for c, v in d["shares"].items()]
            layers += [dict(model=label, seed=seed, layer=name, rate=100 * v)
                       for name, v in d["layer_change_rate"].items()]
    return pd.DataFrame(shares), pd.DataFrame(layers), stored, records


def _categories(d: dict) -> dict[str, str]:
    """Per-image 0/1 strings: routing unchanged, robust prediction, and the four categories."""
    changed, correct = from_bits(d["routing_changed_bits"]), from_bits(d["correct_bits"])
    return {"unchanged": bits(~changed), "correct": bits(correct),
            CATEGORIES[0]: bits(~changed & correct), CATEGORIES[1]: bits(~changed & ~correct)}


def dissection_verdicts(stored: dict, preset: str) -> list[Verdict]:
    """C4 on theta-bar, C5 between theta-bar and theta-bar-bar, and the same questions for AdvMoE vs AT (MoE)."""
    per = {label: [_categories(d) for d in ds] for label, ds in stored.items()}
    col = lambda label, key: [per_image(c[key]) for c in per[label]]
    bar, barbar = THETA_BAR, THETA_BARBAR
    steps = next(iter(stored.values()))[0]["steps"]
    how = lambda text: verdict(*text, metric="v", preset=preset)
    return [
        how((f"Robust routers are not sufficient: of the PGD-{steps} attacks that leave the routing of {bar} intact, "
             f"more fool it than not", col(bar, CATEGORIES[1]), col(bar, CATEGORIES[0]))),
        how((f"Robustifying the experts of {bar} raises prediction robustness: {barbar} RA > {bar} RA",
             col(barbar, "correct"), col(bar, "correct"))),
        how((f"... but lowers the routers' robustness: {bar} routing unchanged > {barbar} routing unchanged",
             col(bar, "unchanged"), col(barbar, "unchanged"))),
        how(("AdvMoE's routing is more robust than AT (MoE)'s: routing unchanged AdvMoE > AT (MoE)",
             col("AdvMoE", "unchanged"), col("AT (MoE)", "unchanged"))),
    ]


def _mask_vector(mask: dict, names: list[str]) -> torch.Tensor:
    parts = []
    for name in names:
        v = torch.zeros(mask["full_widths"][name], dtype=torch.bool)
        v[torch.tensor(mask["kept"][name], dtype=torch.long)] = True
        parts.append(v)
    return torch.cat(parts)


def surprisal(routes: dict[str, torch.Tensor]) -> list[float]:
    """Per input, -log2 of its pathway's frequency among the inputs: their mean is the entropy of the pathway
    frequencies (`pathways.diversity`), so the paired verdict rule applies to diversity too."""
    paths = list(zip(*(c.tolist() for c in routes.values())))
    counts, n = Counter(paths), len(paths)
    return [-math.log2(counts[p] / n) for p in paths]


def pathway_measures(moe_spec: ex.ExperimentSpec, dissection: dict, mask: dict) -> dict:
    """Per image: IoU of the clean and of the adversarial pathway with the mask pathway, IoU of clean and adversarial
    pathways, pathway surprisal (clean, adversarial); and the number of distinct pathways."""
    layers = moe_layers(create_model(moe_spec.backbone, "moe", moe_spec.scale, moe_spec.n_experts,
                                     moe_spec.num_classes, moe_spec.router, moe_spec.base_width))
    full = {name: mask["full_widths"][name] for name in layers}
    clean = {k: from_digits(v) for k, v in dissection["routes_clean"].items()}
    adv = {k: from_digits(v) for k, v in dissection["routes_adversarial"].items()}
    p_clean, p_adv = moe_pathways(clean, layers, full), moe_pathways(adv, layers, full)
    m = _mask_vector(mask, list(layers))
    return {"iou_mask_clean": iou(p_clean, m).tolist(), "iou_mask_adversarial": iou(p_adv, m).tolist(),
            "iou_clean_adversarial": iou(p_clean, p_adv).tolist(),
            "surprisal_clean": surprisal(clean), "surprisal_adversarial": surprisal(adv),
            "distinct_clean": len(Counter(zip(*(c.tolist() for c in clean.values())))),
            "distinct_adversarial": len(Counter(zip(*(c.tolist() for c in adv.values()))))}


FIG6_MODELS = ("AdvMoE", "AT (MoE)")


def page_models(preset: str, grid: list[float] | None = None) -> tuple[list, list, list]:
    """(models, models to dissect, Sparse models whose mask Fig. 6 reads) of the Fig. 3-6 pages at a preset."""
    models, dissect = {}, {}
    for scale in scales(preset) if grid is None else grid:
        for seed in seeds(preset, scale):
            models.update({s.hash: s for key, s in sec4_specs(preset, scale, seed).items() if key in FIG3})
    for seed in ex.preset_seeds(preset):
        for spec in dissected(preset, seed).values():
            models[spec.hash] = dissect[spec.hash] = spec
    masks = [ex.hydra_chain(preset, VERDICT_SCALE, seed=seed).parent for seed in ex.preset_seeds(preset)]
    return list(models.values()), list(dissect.values()), masks


def _dissection_task(spec, device="cpu", root=None, recompute=False, progress=True, position=0):
    return ex.dissection(spec, None, device, root, recompute, progress)


def _mask_task(spec, device="cpu", root=None, recompute=False, progress=True, position=0):
    return ex.mask_channels(spec, device, root, recompute, progress)


def precompute(preset: str, device: str = "cpu", jobs: int = 1, progress: bool = True) -> None:
    """Train what the Fig. 3-6 pages need and compute their dissections and masks, `jobs` at a time (stored ones
    are reused), so that the pages only read."""
    models, dissect, masks = page_models(preset)
    ex.get_many(models + masks, device, progress=progress, jobs=jobs)
    ex.get_many(dissect, device, progress=progress, jobs=jobs, task=_dissection_task)
    ex.get_many(masks, device, progress=progress, jobs=jobs, task=_mask_task)


def fig6(preset: str, device: str, recompute: bool):
    """Fig. 6's measures per model and seed (AT (Sparse) of the same seed gives the mask), per-image rows for the
    plots, the per-seed summary, the verdicts of C11 and the records."""
    import pandas as pd

    measures, rows, summary, records = {}, [], [], []
    for seed in ex.preset_seeds(preset):
        sparse = ex.hydra_chain(preset, VERDICT_SCALE, seed=seed)
        mask = ex.mask_channels(sparse.parent, device, recompute=recompute, progress=False)
        records.append(dict(label="AT (Sparse)", seed=seed, metrics=ex.get(sparse, device, progress=False), spec=sparse))
        for label in FIG6_MODELS:
            spec = dissected(preset, seed)[label]
            d = ex.dissection(spec, device=device, recompute=recompute, progress=False)
            records.append(dict(label=label, seed=seed, metrics=ex.get(spec, device, progress=False), spec=spec))
            m = pathway_measures(spec, d, mask)
            measures.setdefault(label, []).append(m)
            for data in ("clean", "adversarial"):
                rows += [dict(model=label, seed=seed, data=data, iou=v) for v in m[f"iou_mask_{data}"]]
            summary.append({"model": label, "seed": seed, "steps": d["steps"], **{
                k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in m.items()}})
    col = lambda label, key: [per_image(m[key]) for m in measures[label]]
    v = lambda claim, key, a, b, **kw: verdict(claim, col(a, key), col(b, key), "v", preset, **kw)
    verdicts = [
        v("AdvMoE's pathways overlap the AT (Sparse) mask less than AT (MoE)'s (clean): IoU AT (MoE) > AdvMoE",
          "iou_mask_clean", "AT (MoE)", "AdvMoE", unit="IoU pts"),
        v("AdvMoE's pathways overlap the AT (Sparse) mask less than AT (MoE)'s (adversarial): IoU AT (MoE) > AdvMoE",
          "iou_mask_adversarial", "AT (MoE)", "AdvMoE", unit="IoU pts"),
        v("AdvMoE's routes move less under attack: clean-vs-adversarial pathway IoU AdvMoE > AT (MoE)",
          "iou_clean_adversarial", "AdvMoE", "AT (MoE)", unit="IoU pts"),
        v("AdvMoE's routing is more diverse: pathway entropy AdvMoE > AT (MoE) (clean)", "surprisal_clean", "AdvMoE",
          "AT (MoE)", scale=1, unit="bits"),
    ]
    return pd.DataFrame(rows), pd.DataFrame(summary), verdicts, records
