"""Standard accuracy (SA), robust accuracy under plain PGD-CE (RA), GFLOPs, expert usage, sanity checks."""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from . import data as datalib
from .attacks import pgd
from .flops import gflops
from .io import bits
from .models import record_routing


def _batches(data: datalib.ImageData, batch_size: int, device, desc: str | None, progress: bool):
    starts = range(0, len(data), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        yield datalib.to_float(data.images[s:s + batch_size], device), data.labels[s:s + batch_size].to(device)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, routes: list | None = None,
             per_example: list | None = None) -> torch.Tensor:
    """The number of correct predictions, as a tensor on the model's device: the host reads it, the routes and the
    per-example bits once, after every batch (`_to_host`), so a GPU never waits for it between batches."""
    with torch.no_grad(), record_routing(model) as r:
        correct = model(x).argmax(1) == y
    if routes is not None:
        routes.append(r)
    if per_example is not None:
        per_example.append(correct)
    return correct.sum()


def _to_host(routes: list | None, per_example: list | None, start: tuple[int, int]) -> None:
    """Move what a pass appended to `routes` and `per_example` (from index `start`) to the CPU, where callers
    read it."""
    for r in (routes or [])[start[0]:]:
        r.update({name: choice.cpu() for name, choice in r.items()})
    if per_example is not None:
        per_example[start[1]:] = [c.cpu() for c in per_example[start[1]:]]


def _histogram(routes: list) -> dict[str, list[int]]:
    total: dict[str, list[int]] = {}
    for r in routes:
        for name, counts in r.histogram().items():
            total[name] = [a + b for a, b in zip(total.get(name, [0] * len(counts)), counts)]
    return total


def accuracy(model: nn.Module, data: datalib.ImageData, device, batch_size: int = 256, progress: bool = True,
             routes: list | None = None, per_example: list | None = None) -> float:
    was_training = model.training
    model.eval()
    start = (len(routes or []), len(per_example or []))
    try:
        correct = int(sum(_correct(model, x, y, routes, per_example)
                          for x, y in _batches(data, batch_size, device, "SA", progress)))
    finally:
        model.train(was_training)
    _to_host(routes, per_example, start)
    return correct / len(data)


def robust_accuracy(model: nn.Module, data: datalib.ImageData, device, eps: float, step_size: float, steps: int,
                    batch_size: int = 256, seed: int = 0, progress: bool = True, routes: list | None = None,
                    per_example: list | None = None) -> float:
    """Accuracy on PGD-CE examples (random start; the paper's RA with steps=50, step 2/255)."""
    generator = torch.Generator(device).manual_seed(seed)
    was_training = model.training
    model.eval()
    correct, start = 0, (len(routes or []), len(per_example or []))
    try:
        for x, y in _batches(data, batch_size, device, f"PGD-{steps} eps={eps * 255:.3g}/255", progress):
            x_adv = pgd(model, x, y, eps, step_size, steps, loss="ce", generator=generator)
            correct += _correct(model, x_adv, y, routes, per_example)
    finally:
        model.train(was_training)
    _to_host(routes, per_example, start)
    return int(correct) / len(data)


def evaluate(model: nn.Module, data: datalib.ImageData, spec, device, progress: bool = True) -> dict:
    """Final metrics of a trained model, with the sanity checks computed on the same attack.

    RA is measured at eps in {0, eps/2, eps}: RA(0) must equal SA exactly and RA must not increase with eps.
    At eps 0 every PGD step is projected straight back to x, so that check runs a single step.
    """
    clean_routes, adv_routes, clean_correct, adv_correct = [], [], [], []
    sa = accuracy(model, data, device, progress=progress, routes=clean_routes, per_example=clean_correct)
    eps_grid = [0.0, spec.eval_eps / 2, spec.eval_eps]
    ra_by_eps = {}
    for eps in eps_grid:
        last = eps == spec.eval_eps
        steps = spec.eval_steps if eps > 0 else 1
        ra_by_eps[eps] = robust_accuracy(model, data, device, eps, spec.eval_step_size, steps, progress=progress,
                                         routes=adv_routes if last else None, per_example=adv_correct if last else None)
    ras = [ra_by_eps[e] for e in eps_grid]
    return {
        "sa": sa,
        "ra": ra_by_eps[spec.eval_eps],
        "ra_by_eps": {f"{e * 255:.4g}/255": ra for e, ra in ra_by_eps.items()},
        "gflops": gflops(model, tuple(data.images.shape[1:])),
        "n_test": len(data),
        "routing": {"clean": _histogram(clean_routes), "adversarial": _histogram(adv_routes)},
        # per test image (in order), 1 = classified correctly: lets two models be compared pairwise
        "correct": {"clean": bits(clean_correct), "pgd": bits(adv_correct)},
        "sanity": {
            "ra_eps0_equals_sa": ras[0] == sa,
            "ra_nonincreasing_in_eps": all(a >= b for a, b in zip(ras, ras[1:])),
        },
    }
