"""The Robust Experts authors' numbers as data (Pavlitska et al., 2025), transcribed from
../shared/papers/robust-experts-2025-facts.md Sec. 5: their plotting notebook's ResNet-18 grids on CIFAR-100, one run
each, (clean, PGD-20, APGD-CE-20) accuracy in %. The paper's own tables could not be read; the facts file maps the
notebook's grids to them (T1 = the paper's Table 1 by the notebook's comment; T3 = the placement ablation).

`GRID[(moe, placement, loss, gate, k, training)] = (clean, pgd, autopgd)`: moe "dense", "block-moe" or "conv-moe";
placement "layer4" (every block or conv of conv5_x), "layer4.0"/"layer4.1" (one block), "layer3", "layer3.0",
"layer3.1"; loss "entropy" (the code's L_ent) or "switch"; gate "conv-gap" or "gap-fc"; training "standard" or
"pgd-at". The column-entropy rows of their later script are left out: the facts file finds five of them to be copies
of other rows.
"""
from __future__ import annotations

BASELINE = {"standard": (71.30, 0.06, 2.31), "pgd-at": (52.14, 16.87, 17.99)}  # dense ResNet-18 (T1 and T3)

# T1: N = 4 in conv5_x; BlockMoE = both layer4 blocks, ConvMoE = every conv of layer4.
# moe loss gate k | standard (clean pgd apgd) | pgd-at (clean pgd apgd)
T1 = """
block-moe entropy conv-gap 1 | 70.08 0.01 2.22 | 51.97 19.06 22.11
block-moe entropy conv-gap 2 | 66.54 0.02 2.89 | 50.69 17.79 19.45
block-moe entropy conv-gap 3 | 66.16 0.01 2.48 | 50.93 17.41 18.99
block-moe entropy conv-gap 4 | 64.96 0.00 2.65 | 50.63 17.23 18.81
block-moe entropy gap-fc 1 | 70.20 0.00 2.66 | 51.76 19.75 22.31
block-moe entropy gap-fc 2 | 67.93 0.01 2.57 | 53.34 18.40 20.38
block-moe entropy gap-fc 3 | 67.90 0.05 2.73 | 51.89 18.10 19.96
block-moe entropy gap-fc 4 | 68.05 0.00 2.42 | 51.77 18.47 19.20
block-moe switch conv-gap 1 | 70.19 0.03 2.51 | 50.82 18.33 20.99
block-moe switch conv-gap 2 | 71.94 0.00 2.96 | 50.94 18.75 20.25
block-moe switch conv-gap 3 | 71.12 0.00 2.23 | 50.61 18.42 19.82
block-moe switch conv-gap 4 | 72.16 0.00 2.73 | 51.00 17.57 18.31
block-moe switch gap-fc 1 | 70.86 0.03 2.99 | 51.36 22.69 21.22
block-moe switch gap-fc 2 | 72.23 0.01 2.34 | 51.39 18.03 20.01
block-moe switch gap-fc 3 | 71.64 0.01 2.34 | 52.06 18.19 19.92
block-moe switch gap-fc 4 | 72.31 0.00 2.56 | 51.72 17.85 18.75
conv-moe entropy conv-gap 1 | 68.11 0.00 2.89 | 50.87 22.74 22.46
conv-moe entropy conv-gap 2 | 44.33 0.76 4.23 | 24.96 14.46 16.13
conv-moe entropy conv-gap 3 | 45.40 1.05 3.55 | 22.14 13.20 15.32
conv-moe entropy conv-gap 4 | 38.61 1.30 3.01 | 25.99 14.77 16.85
conv-moe entropy gap-fc 1 | 69.84 0.00 3.11 | 50.96 25.03 24.03
conv-moe entropy gap-fc 2 | 45.64 2.55 3.23 | 29.36 16.51 18.28
conv-moe entropy gap-fc 3 | 43.85 0.04 3.89 | 27.04 15.17 16.89
conv-moe entropy gap-fc 4 | 28.26 1.34 4.03 | 30.88 17.33 19.27
conv-moe switch conv-gap 1 | 68.93 0.04 3.26 | 49.15 19.41 20.51
conv-moe switch conv-gap 2 | 71.54 0.01 3.45 | 47.89 18.61 19.26
conv-moe switch conv-gap 3 | 70.72 0.06 2.89 | 50.21 19.95 19.17
conv-moe switch conv-gap 4 | 71.45 0.00 3.88 | 50.60 19.70 18.59
conv-moe switch gap-fc 1 | 69.89 0.00 3.28 | 49.08 18.85 20.40
conv-moe switch gap-fc 2 | 71.32 0.02 3.35 | 48.79 19.38 20.13
conv-moe switch gap-fc 3 | 71.35 0.01 2.59 | 50.25 19.29 19.27
conv-moe switch gap-fc 4 | 71.80 0.07 3.79 | 51.38 19.53 17.77
"""

# T3: BlockMoE placements, k = 1, N = 4 (both layer4 blocks: T1's k = 1 rows). Where the notebook's cells disagree
# the first cell's number is kept (layer3.0 entropy conv-gap AutoPGD 17.56 vs 17.99; layer3 switch gap-fc PGD 0.03
# vs 0.00).
# placement loss gate | standard | pgd-at
T3 = """
layer3.0 entropy conv-gap | 68.59 0.00 2.26 | 48.69 15.62 17.56
layer3.0 entropy gap-fc | 68.70 0.01 2.30 | 49.90 15.79 17.44
layer3.0 switch conv-gap | 70.88 0.02 2.85 | 50.87 16.45 18.21
layer3.0 switch gap-fc | 70.85 0.01 2.75 | 50.63 16.33 18.24
layer3.1 entropy conv-gap | 69.37 0.00 2.01 | 50.86 16.28 17.73
layer3.1 entropy gap-fc | 69.63 0.00 2.53 | 51.11 16.43 17.06
layer3.1 switch conv-gap | 71.44 0.00 2.56 | 51.71 16.26 18.52
layer3.1 switch gap-fc | 71.40 0.01 2.53 | 51.32 15.73 19.66
layer3 entropy conv-gap | 66.84 0.02 2.34 | 49.77 16.11 17.74
layer3 entropy gap-fc | 67.61 0.00 2.71 | 50.34 16.29 17.72
layer3 switch conv-gap | 70.30 0.00 2.35 | 51.33 15.97 20.27
layer3 switch gap-fc | 70.63 0.03 2.71 | 51.31 15.31 20.93
layer4.0 entropy conv-gap | 69.11 0.00 2.63 | 52.14 17.45 18.22
layer4.0 entropy gap-fc | 70.07 0.01 2.55 | 52.00 17.52 19.85
layer4.0 switch conv-gap | 71.39 0.01 2.74 | 52.89 16.35 20.01
layer4.0 switch gap-fc | 70.98 0.01 2.59 | 52.57 16.43 22.00
layer4.1 entropy conv-gap | 69.39 0.00 2.49 | 53.04 18.92 20.61
layer4.1 entropy gap-fc | 70.27 0.00 2.42 | 54.91 19.96 20.76
layer4.1 switch conv-gap | 71.60 0.00 3.21 | 54.04 19.30 19.73
layer4.1 switch gap-fc | 71.05 0.00 2.70 | 52.15 18.58 20.29
"""


def _triple(text: str) -> tuple[float, float, float]:
    clean, pgd, apgd = (float(v) for v in text.split())
    return clean, pgd, apgd


def _grid() -> dict[tuple, tuple[float, float, float]]:
    out = {("dense", None, None, None, None, t): v for t, v in BASELINE.items()}
    for line in T1.strip().splitlines():
        key, standard, at = line.split("|")
        moe, loss, gate, k = key.split()
        for training, numbers in (("standard", standard), ("pgd-at", at)):
            out[(moe, "layer4", loss, gate, int(k), training)] = _triple(numbers)
    for line in T3.strip().splitlines():
        key, standard, at = line.split("|")
        placement, loss, gate = key.split()
        for training, numbers in (("standard", standard), ("pgd-at", at)):
            out[("block-moe", placement, loss, gate, 1, training)] = _triple(numbers)
    return out


GRID = _grid()


def value(kind: str, training: str, placement: str | None = None, balancing: str | None = None,
          gate: str | None = None, top_k: int | None = None) -> tuple[float, float, float] | None:
    """The authors' (clean, PGD, AutoPGD) for a configuration, None where they ran none like it."""
    if kind == "dense":
        return BASELINE.get(training)
    return GRID.get((kind, placement, balancing, gate, top_k, training))
