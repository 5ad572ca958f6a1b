"""The paper's numbers as data, transcribed from ../shared/papers/advmoe-iccv2023.txt.

`PAPER[(table, dataset, backbone, method, scale, metric)] = (mean, std)`; std is None where the paper
gives none (GFLOPs, figure labels). Methods: at-dense, at-s-dense, at-sparse, at-moe, advmoe, and for
Fig. 1b also st-dense, st-s-dense, st-moe (standard training). Metrics: ra (PGD-50, %), ra_aa
(AutoAttack, %), sa (%), gflops. Use `value(...)` to look one up.
"""
from __future__ import annotations

METHODS = {  # our (kind, method) -> the paper's row label
    "at-dense": "AT (Dense)", "at-s-dense": "AT (S-Dense)", "at-sparse": "AT (Sparse)", "at-moe": "AT (MoE)",
    "advmoe": "AdvMoE", "st-dense": "ST (Dense)", "st-s-dense": "ST (S-Dense)", "st-moe": "ST (MoE)",
}
SCALE = {"at-dense": 1.0, "st-dense": 1.0}  # every other row of Tables 1/2/A1 is at r = 0.5

# Table 1: RA (PGD-50), SA, GFLOPs; mean +- std over 3 trials; r = 0.5 except Dense.
TABLE1 = """
cifar10 resnet18 at-dense 50.13±0.13 82.99±0.11 0.54
cifar10 resnet18 at-s-dense 48.12±0.09 80.18±0.11 0.14
cifar10 resnet18 at-sparse 47.93±0.17 80.45±0.13 0.14
cifar10 resnet18 at-moe 45.57±0.51 78.84±0.75 0.15
cifar10 resnet18 advmoe 51.83±0.12 80.15±0.11 0.15
cifar10 wrn28-10 at-dense 51.75±0.12 83.54±0.15 5.25
cifar10 wrn28-10 at-s-dense 50.66±0.13 82.24±0.10 1.31
cifar10 wrn28-10 at-sparse 48.95±0.14 82.44±0.17 1.31
cifar10 wrn28-10 at-moe 46.73±0.46 77.42±0.73 1.75
cifar10 wrn28-10 advmoe 55.73±0.13 84.32±0.18 1.75
cifar10 vgg16 at-dense 46.19±0.21 82.18±0.23 0.31
cifar10 vgg16 at-s-dense 45.72±0.18 80.10±0.16 0.07
cifar10 vgg16 at-sparse 46.13±0.15 79.32±0.18 0.07
cifar10 vgg16 at-moe 43.37±0.46 76.49±0.65 0.12
cifar10 vgg16 advmoe 49.82±0.11 80.03±0.10 0.12
cifar10 densenet at-dense 44.52±0.14 74.97±0.19 0.07
cifar10 densenet at-s-dense 38.07±0.13 69.63±0.11 0.02
cifar10 densenet at-sparse 37.73±0.13 67.35±0.12 0.02
cifar10 densenet at-moe 35.21±0.74 64.41±0.81 0.03
cifar10 densenet advmoe 39.97±0.11 70.13±0.15 0.03
cifar100 resnet18 at-dense 27.23±0.08 58.21±0.12 0.54
cifar100 resnet18 at-s-dense 26.41±0.16 57.02±0.14 0.14
cifar100 resnet18 at-sparse 26.13±0.14 57.24±0.12 0.14
cifar100 resnet18 at-moe 22.72±0.42 53.34±0.61 0.15
cifar100 resnet18 advmoe 28.05±0.13 57.73±0.11 0.15
cifar100 wrn28-10 at-dense 27.90±0.13 57.60±0.09 5.25
cifar100 wrn28-10 at-s-dense 26.30±0.10 56.80±0.08 1.31
cifar100 wrn28-10 at-sparse 25.83±0.16 57.39±0.14 1.31
cifar100 wrn28-10 at-moe 22.94±0.55 53.39±0.49 1.75
cifar100 wrn28-10 advmoe 28.82±0.14 57.56±0.17 1.75
cifar100 vgg16 at-dense 22.37±0.15 52.36±0.17 0.31
cifar100 vgg16 at-s-dense 20.58±0.13 48.89±0.14 0.07
cifar100 vgg16 at-sparse 21.12±0.22 48.03±0.17 0.07
cifar100 vgg16 at-moe 19.34±0.43 45.51±0.75 0.12
cifar100 vgg16 advmoe 21.21±0.21 48.33±0.17 0.12
cifar100 densenet at-dense 21.72±0.13 48.64±0.14 0.07
cifar100 densenet at-s-dense 16.86±0.21 39.97±0.11 0.02
cifar100 densenet at-sparse 17.72±0.14 41.03±0.16 0.02
cifar100 densenet at-moe 14.45±0.45 36.72±0.71 0.03
cifar100 densenet advmoe 23.31±0.11 48.97±0.14 0.03
tiny-imagenet resnet18 at-dense 38.17±0.14 53.81±0.16 2.23
tiny-imagenet resnet18 at-s-dense 36.29±0.16 52.15±0.13 0.55
tiny-imagenet resnet18 at-sparse 36.11±0.13 50.75±0.17 0.55
tiny-imagenet resnet18 at-moe 34.41±0.31 47.73±0.41 0.75
tiny-imagenet resnet18 advmoe 39.99±0.12 53.31±0.14 0.75
tiny-imagenet wrn28-10 at-dense 38.82±0.15 55.30±0.19 21.0
tiny-imagenet wrn28-10 at-s-dense 37.09±0.12 54.83±0.16 5.26
tiny-imagenet wrn28-10 at-sparse 37.32±0.14 54.32±0.23 5.26
tiny-imagenet wrn28-10 at-moe 33.31±0.41 49.91±0.52 7.44
tiny-imagenet wrn28-10 advmoe 40.15±0.15 55.18±0.09 7.44
imagenet resnet18 at-dense 44.64±0.14 60.32±0.15 1.82
imagenet resnet18 at-s-dense 41.19±0.16 58.32±0.12 0.48
imagenet resnet18 at-sparse 40.87±0.15 58.22±0.13 0.48
imagenet resnet18 at-moe 35.57±0.73 55.47±0.66 0.67
imagenet resnet18 advmoe 43.32±0.12 59.72±0.17 0.67
imagenet wrn28-10 at-dense 45.13±0.14 60.97±0.16 16.1
imagenet wrn28-10 at-s-dense 41.72±0.15 58.98±0.18 4.04
imagenet wrn28-10 at-sparse 39.88±0.18 59.21±0.14 4.04
imagenet wrn28-10 at-moe 37.42±0.44 56.44±0.71 5.15
imagenet wrn28-10 advmoe 46.82±0.11 58.87±0.07 5.15
"""

# Table 2: RA-AA (AutoAttack); RA-PGD, SA and GFLOPs there repeat Table 1.
TABLE2_AA = """
cifar10 resnet18 at-dense 44.72±0.15
cifar10 resnet18 at-s-dense 42.24±0.13
cifar10 resnet18 at-sparse 42.11±0.11
cifar10 resnet18 at-moe 40.42±0.19
cifar10 resnet18 advmoe 45.13±0.07
cifar10 wrn28-10 at-dense 45.13±0.12
cifar10 wrn28-10 at-s-dense 44.14±0.10
cifar10 wrn28-10 at-sparse 43.97±0.11
cifar10 wrn28-10 at-moe 41.11±0.23
cifar10 wrn28-10 advmoe 45.89±0.11
cifar100 resnet18 at-dense 23.11±0.06
cifar100 resnet18 at-s-dense 22.11±0.13
cifar100 resnet18 at-sparse 21.89±0.11
cifar100 resnet18 at-moe 16.33±0.25
cifar100 resnet18 advmoe 23.33±0.06
cifar100 wrn28-10 at-dense 23.45±0.11
cifar100 wrn28-10 at-s-dense 22.23±0.13
cifar100 wrn28-10 at-sparse 21.97±0.09
cifar100 wrn28-10 at-moe 17.87±0.24
cifar100 wrn28-10 advmoe 23.57±0.12
"""

# Table A1: 10-step training attack (instead of 2): RA, RA-AA, SA, GFLOPs on CIFAR-10.
TABLEA1 = """
cifar10 resnet18 at-dense 50.97±0.14 46.29±0.15 81.44±0.15 0.54
cifar10 resnet18 at-s-dense 48.22±0.11 43.79±0.15 79.93±0.12 0.14
cifar10 resnet18 at-sparse 48.29±0.14 43.18±0.19 79.35±0.17 0.14
cifar10 resnet18 at-moe 46.79±0.49 41.13±0.29 78.32±0.51 0.15
cifar10 resnet18 advmoe 52.22±0.14 46.44±0.09 79.62±0.12 0.15
cifar10 wrn28-10 at-dense 52.35±0.18 46.49±0.11 81.45±0.15 5.25
cifar10 wrn28-10 at-s-dense 50.92±0.18 44.69±0.19 80.33±0.15 1.31
cifar10 wrn28-10 at-sparse 48.69±0.18 44.50±0.16 80.32±0.11 1.31
cifar10 wrn28-10 at-moe 47.24±0.57 42.39±0.26 76.21±0.42 1.75
cifar10 wrn28-10 advmoe 56.13±0.11 46.73±0.08 82.19±0.14 1.75
"""

# Table A2 (and Fig. 7/8): model scale r in {0.2, 0.5, 0.8}; RA, SA, GFLOPs on CIFAR-10. Dense is r = 1.
TABLEA2 = """
cifar10 resnet18 at-s-dense 0.2 43.83±0.11 78.28±0.14 0.13
cifar10 resnet18 at-s-dense 0.5 48.12±0.09 80.18±0.11 0.14
cifar10 resnet18 at-s-dense 0.8 49.44±0.09 81.32±0.11 0.36
cifar10 resnet18 at-sparse 0.2 43.24±0.14 79.14±0.14 0.13
cifar10 resnet18 at-sparse 0.5 47.93±0.17 80.45±0.13 0.14
cifar10 resnet18 at-sparse 0.8 48.32±0.13 81.77±0.11 0.36
cifar10 resnet18 at-moe 0.2 38.75±0.41 76.54±0.29 0.14
cifar10 resnet18 at-moe 0.5 45.57±0.51 78.84±0.75 0.15
cifar10 resnet18 at-moe 0.8 45.99±0.42 79.46±0.31 0.37
cifar10 resnet18 advmoe 0.2 49.18±0.12 79.03±0.19 0.14
cifar10 resnet18 advmoe 0.5 51.83±0.12 80.15±0.11 0.15
cifar10 resnet18 advmoe 0.8 52.38±0.14 81.44±0.13 0.37
cifar10 resnet18 at-dense 1.0 50.13±0.13 82.99±0.11 0.54
cifar10 wrn28-10 at-s-dense 0.2 49.59±0.17 79.93±0.13 0.21
cifar10 wrn28-10 at-s-dense 0.5 50.66±0.13 82.24±0.10 1.31
cifar10 wrn28-10 at-s-dense 0.8 51.73±0.17 82.88±0.14 3.36
cifar10 wrn28-10 at-sparse 0.2 48.37±0.21 79.32±0.21 0.21
cifar10 wrn28-10 at-sparse 0.5 48.95±0.14 82.44±0.17 1.31
cifar10 wrn28-10 at-sparse 0.8 50.73±0.19 82.11±0.23 3.36
cifar10 wrn28-10 at-moe 0.2 42.29±0.51 75.32±0.38 0.94
cifar10 wrn28-10 at-moe 0.5 46.73±0.46 77.42±0.73 1.75
cifar10 wrn28-10 at-moe 0.8 46.94±0.45 79.11±0.27 4.57
cifar10 wrn28-10 advmoe 0.2 54.02±0.09 79.55±0.12 0.94
cifar10 wrn28-10 advmoe 0.5 55.73±0.13 84.32±0.18 1.75
cifar10 wrn28-10 advmoe 0.8 56.07±0.14 84.45±0.09 4.57
cifar10 wrn28-10 at-dense 1.0 51.75±0.12 83.54±0.15 5.25
"""

# Fig. 1b (CIFAR-10): bar labels, one decimal, no std. SA under standard training; RA under AT / AdvMoE.
FIG1B = """
resnet18 st-dense sa 95.2
resnet18 st-s-dense sa 93.7
resnet18 st-moe sa 94.3
wrn28-10 st-dense sa 96.2
wrn28-10 st-s-dense sa 94.7
wrn28-10 st-moe sa 95.3
vgg16 st-dense sa 93.6
vgg16 st-s-dense sa 92.2
vgg16 st-moe sa 92.9
densenet st-dense sa 93.1
densenet st-s-dense sa 90.7
densenet st-moe sa 92.3
resnet18 at-dense ra 50.1
resnet18 at-s-dense ra 48.0
resnet18 at-moe ra 44.9
resnet18 advmoe ra 51.8
wrn28-10 at-dense ra 51.8
wrn28-10 at-s-dense ra 49.1
wrn28-10 at-moe ra 46.2
wrn28-10 advmoe ra 55.7
vgg16 at-dense ra 46.2
vgg16 at-s-dense ra 43.7
vgg16 at-moe ra 41.4
vgg16 advmoe ra 49.8
densenet at-dense ra 44.5
densenet at-s-dense ra 38.1
densenet at-moe ra 31.4
densenet advmoe ra 39.7
"""


def _num(s: str) -> tuple[float, float | None]:
    mean, _, std = s.partition("±")
    return float(mean), float(std) if std else None


def _build() -> dict:
    out = {}
    for line in TABLE1.split("\n"):
        if line:
            d, b, m, ra, sa, gf = line.split()
            r = SCALE.get(m, 0.5)
            out.update({("1", d, b, m, r, "ra"): _num(ra), ("1", d, b, m, r, "sa"): _num(sa),
                        ("1", d, b, m, r, "gflops"): _num(gf)})
    for line in TABLE2_AA.split("\n"):
        if line:
            d, b, m, aa = line.split()
            r = SCALE.get(m, 0.5)
            out[("2", d, b, m, r, "ra_aa")] = _num(aa)
            for metric in ("ra", "sa", "gflops"):  # repeated from Table 1 (Table 2 caption)
                out[("2", d, b, m, r, metric)] = out[("1", d, b, m, r, metric)]
    for line in TABLEA1.split("\n"):
        if line:
            d, b, m, ra, aa, sa, gf = line.split()
            r = SCALE.get(m, 0.5)
            for metric, v in zip(("ra", "ra_aa", "sa", "gflops"), (ra, aa, sa, gf)):
                out[("A1", d, b, m, r, metric)] = _num(v)
    for line in TABLEA2.split("\n"):
        if line:
            d, b, m, r, ra, sa, gf = line.split()
            for metric, v in zip(("ra", "sa", "gflops"), (ra, sa, gf)):
                out[("A2", d, b, m, float(r), metric)] = _num(v)
    for line in FIG1B.split("\n"):
        if line:
            b, m, metric, v = line.split()
            out[("fig1b", "cifar10", b, m, SCALE.get(m, 0.5), metric)] = _num(v)
    return out


PAPER = _build()


def method_id(kind: str, method: str) -> str:
    """Our (kind, method) -> the paper's row id: ('moe', 'advmoe') -> 'advmoe', ('dense', 'at') -> 'at-dense'."""
    if method == "advmoe":
        return "advmoe"
    if method.startswith("hydra"):
        return "at-sparse"
    return f"{'st' if method == 'standard' else 'at'}-{kind}"


def value(dataset: str, backbone: str, method: str, scale: float, metric: str, table: str = "1"):
    """(mean, std) as the paper reports it, or None where the paper has no such number."""
    return PAPER.get((table, dataset.replace("cifar10-jpeg", "cifar10"), backbone, method, float(scale), metric))


# Table 3 (p.9): MoE-ViT, ImageNet, DeiT-Tiny, "other settings follow Tab. 1"; no std. [30]: Puigcerver et al.,
# arXiv 2210.10253, the robust ViT-MoE recipe the paper calls AT (MoE). Method -> (RA %, SA %, GFLOPs).
TABLE3 = {"SOTA [30]": (44.63, 61.72, 0.27), "AdvMoE": (45.93, 61.67, 0.27)}
TABLE3_MISSING = (  # what a reproduction would need and no source gives (../shared/papers/advmoe-backbones-facts.md 1.5)
    "the MoE-ViT itself: which blocks (attention, MLP) hold experts, how many experts N, their scale r, the router",
    "any code: the authors' repository has no ViT or DeiT (nothing outside its vendored torchattacks)",
    "an account of the GFLOPs: 0.27 is a fraction of a dense DeiT-Tiny's (the table below) that no r or N in the "
    "text explains",
    "ImageNet, which is not on this machine",
)

# Sec. 4's numbers, given in the text at r = 0.5 (ResNet-18, CIFAR-10, PGD-50), in %.
FIG3_RA = {"theta-bar": 37.64, "M1": 0.0, "M3": 20.04, "M2": 47.68}  # Fig. 3: robust accuracy of each model
FIG4_SHARES = {"routing unchanged, prediction correct": 31.74, "routing unchanged": 76.27}  # Fig. 4: theta-bar


def _vs(a: str, b: str, metric: str = "ra", table: str = "1", unit: str = "%") -> str:
    """The paper's two numbers of a comparison "a > b" (ResNet-18, CIFAR-10; its own scale per row), as the ledger
    shows them beside ours."""
    x, y = (PAPER[(table, "cifar10", "resnet18", m, SCALE.get(m, 0.5), metric)][0] for m in (a, b))
    return f"{x:g}{unit} vs {y:g}{unit}"


def _cut(a: str, b: str) -> str:
    """The paper's GFLOPs cut of row a against row b (Table 1), with both counts."""
    x, y = (PAPER[("1", "cifar10", "resnet18", m, SCALE.get(m, 0.5), "gflops")][0] for m in (a, b))
    return f"cut {100 * (1 - x / y):.1f}% ({x:g} vs {y:g} GFLOPs)"


# The paper's claims, in its order, numbered in that order. `covered_by`: (notebook, verdict claim prefix[, the
# paper's numbers for that comparison]) whose computed verdicts decide the claim; empty = not yet covered.
_UNCHANGED_WRONG = FIG4_SHARES["routing unchanged"] - FIG4_SHARES["routing unchanged, prediction correct"]
CLAIMS = [
    dict(id="C1", source="Sec. 3, Fig. 2",
         covered_by=[("fig2_at_vs_eps", "AT (S-Dense) RA > AT (MoE) RA at every eps",
                      _vs("at-s-dense", "at-moe") + " at 8/255 (Table 1)")],
         text="Under the same AT (TRADES), the MoE-CNN is less robust than S-Dense at every eps in {2..8}/255."),
    dict(id="C2", source="Fig. 1b", covered_by=[("fig1_overview", "ST: MoE SA > S-Dense SA", _vs("st-moe", "st-s-dense", "sa", "fig1b")),
                                                ("fig1_overview", "ST: Dense SA > MoE SA", _vs("st-dense", "st-moe", "sa", "fig1b"))],
         text="Under standard training the MoE-CNN's clean accuracy lies between S-Dense and Dense."),
    dict(id="C3", source="Sec. 4, Insight 1, Fig. 3",
         covered_by=[("fig3_router_only", "Router-only AT raises RA", f"{FIG3_RA['theta-bar']:g}% vs {FIG3_RA['M1']:g}%"),
                     ("fig3_router_only", "Router-only AT stays below AT (S-Dense)",
                      f"{FIG3_RA['M2']:g}% vs {FIG3_RA['theta-bar']:g}%")],
         text="Robustifying only the routers raises the MoE's RA (37.6% vs 0%) but stays well below AT (S-Dense)."),
    dict(id="C4", source="Sec. 4, Insight 2, Fig. 4",
         covered_by=[("fig4_fig5_dissection", "Robust routers are not sufficient",
                      f"{_UNCHANGED_WRONG:.2f}% vs {FIG4_SHARES['routing unchanged, prediction correct']:g}% of images")],
         text="Robust routers are not sufficient: over half of the attacks that leave routing intact still fool the MoE."),
    dict(id="C5", source="Sec. 4, Insight 3, Fig. 5",
         covered_by=[("fig4_fig5_dissection", "Robustifying the experts of θ̄ (routers AT) raises prediction robustness"),
                     ("fig4_fig5_dissection", "... but lowers the routers' robustness")],
         text="Robustifying the experts after the routers raises overall RA but lowers the routers' robustness."),
    dict(id="C6", source="Sec. 5.2, Table 1 (first)",
         covered_by=[("tab1_overall", "AdvMoE RA > AT (MoE) RA", _vs("advmoe", "at-moe")),
                     ("tab1_overall", "AdvMoE RA > AT (S-Dense) RA", _vs("advmoe", "at-s-dense")),
                     ("tab1_overall", "AdvMoE RA > AT (Sparse) RA", _vs("advmoe", "at-sparse"))],
         text="AdvMoE is more robust than AT (S-Dense), AT (Sparse) and AT (MoE) in every cell (by about 1-5 points)."),
    dict(id="C7", source="Sec. 5.2, Table 1 (first)",
         covered_by=[("tab1_overall", "AdvMoE RA > AT (Dense) RA", _vs("advmoe", "at-dense"))],
         text="AdvMoE (r = 0.5) beats AT (Dense) (r = 1) in most cells, by about 1-4 points."),
    dict(id="C8", source="Sec. 5.2, Table 1 (third); Fig. 1b shows the same two models",
         covered_by=[("tab1_overall", "AT (S-Dense) RA > AT (MoE) RA", _vs("at-s-dense", "at-moe"))],
         text="AT applied directly to the MoE, AT (MoE), is worse than AT (S-Dense) in every cell."),
    dict(id="C9", source="Sec. 5.2, Table 1 (fourth)",
         covered_by=[("tab1_overall", "MoE cuts > 50% of Dense GFLOPs", _cut("advmoe", "at-dense"))],
         text="The MoE-CNN keeps more than 50% of Dense's inference GFLOPs off."),
    dict(id="C10", source="Sec. 5.2, Table 2",
         covered_by=[("tab2_autoattack", "AdvMoE RA-AA > AT (S-Dense) RA-AA", _vs("advmoe", "at-s-dense", "ra_aa", "2")),
                     ("tab2_autoattack", "AdvMoE RA-AA > AT (Sparse) RA-AA", _vs("advmoe", "at-sparse", "ra_aa", "2")),
                     ("tab2_autoattack", "AdvMoE RA-AA > AT (MoE) RA-AA", _vs("advmoe", "at-moe", "ra_aa", "2"))],
         text="Under AutoAttack, AdvMoE still beats AT (S-Dense), AT (Sparse) and AT (MoE)."),
    dict(id="C11", source="Sec. 5.2, Fig. 6",
         covered_by=[("fig6_pathway_iou", "AdvMoE's pathways overlap the AT (Sparse) mask less"),
                     ("fig6_pathway_iou", "AdvMoE's routes move less under attack"),
                     ("fig6_pathway_iou", "AdvMoE's routing is more diverse")],
         text="AdvMoE's pathways overlap less (lower IoU) with the AT (Sparse) mask than AT (MoE)'s, and are more diverse."),
    dict(id="C12", source="Sec. 5.2, Fig. 7",
         covered_by=[("fig7_experts_vs_scale", "AdvMoE beats AT (Dense) where N < 8 and r in [0.5, 0.9]"),
                     ("fig7_experts_vs_scale", "AdvMoE falls behind AT (Dense) where N >= 8 and r < 0.5")],
         text="AdvMoE beats AT (Dense) for N < 8 and r in [0.5, 0.9]; with N >= 8 and r < 0.5 it falls behind."),
    dict(id="C13", source="Sec. 5.2, Fig. 8, Table A2",
         covered_by=[("fig8_tabA2_model_scale", "AdvMoE beats every same-r baseline at r ="),
                     ("fig8_tabA2_model_scale", "AdvMoE's gain over the best same-r baseline grows with r")],
         text="At every model scale r AdvMoE beats every same-r baseline, and its gain grows with r."),
    dict(id="C14", source="Appendix C, Table A1",
         covered_by=[("tabA1_train_steps", "10-step training: AdvMoE RA > AT (MoE) RA", _vs("advmoe", "at-moe", "ra", "A1")),
                     ("tabA1_train_steps", "With a 10-step training attack AdvMoE beats every baseline")],
         text="With a 10-step training attack AdvMoE still beats every baseline in RA and RA-AA."),
    dict(id="C15", source="Appendix C, Fig. A2",
         covered_by=[("figA2_trajectory", "AdvMoE's RA (tracked) has plateaued"),
                     ("figA2_trajectory", "AdvMoE's SA has plateaued")],
         text="AdvMoE converges within 100 epochs under the cosine schedule."),
    dict(id="C16", source="Sec. 5.2, Table 3",
         covered_by=[("tab3_moe_vit", "AdvMoE RA > [30] RA on MoE-ViT",
                      f"{TABLE3['AdvMoE'][0]:g}% vs {TABLE3['SOTA [30]'][0]:g}%")],
         text="On an MoE-ViT (DeiT-Tiny, ImageNet) AdvMoE is more robust than the ViT-MoE recipe of [30], at equal "
              "GFLOPs."),
]
