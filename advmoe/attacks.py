"""L-infinity attacks on inputs in [0, 1]."""
from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import random_like
from .io import bits
from .losses import kl_from_logits

LOSSES = ("ce", "kl")


def check_attack(eps: float, step_size: float, steps: int, loss: str = "ce") -> None:
    if not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (inputs live in [0, 1]), got {eps!r}")
    if not isinstance(step_size, (int, float)) or step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; allowed: {', '.join(LOSSES)}")


@contextlib.contextmanager
def frozen_eval(model: nn.Module):
    """Eval mode with parameter gradients off (only the input's gradient is needed); both restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


def pgd_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
                  loss: str = "ce", random_start: bool = True, generator: torch.Generator | None = None,
                  last_iterate: bool = False):
    """Yield PGD's answer after each of `steps` steps (see `pgd`): PGD-k is exactly the k-th answer.

    With loss="ce" (evaluation) an example keeps the first iterate that fooled the model: sign steps of a
    fixed size can jump out of an adversarial region again (measured: at eps 1.0, step 0.5, an image
    misclassified after step 3 was classified correctly after step 4), so reporting the last iterate would
    let robust accuracy rise with more steps. Which iterates fooled the model is read off the forward pass
    each step needs anyway, so this costs nothing; robust accuracy is non-increasing in the steps.
    With loss="kl" (TRADES training), or with last_iterate=True (PGD adversarial training with CE, Madry et al.), the
    answer is the last iterate.
    """
    check_attack(eps, step_size, steps, loss)
    with frozen_eval(model):
        target = None
        if loss == "kl":
            with torch.no_grad():
                target = model(x)
        delta = torch.zeros_like(x)
        if random_start and eps > 0:
            delta = random_like(x, generator).mul_(2 * eps).sub_(eps)  # torch.rand (distributed: see there)
        x_adv = (x + delta).clamp_(0, 1)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        kept = x_adv.clone()
        keep_first = loss == "ce" and not last_iterate
        if steps == 0:
            yield x_adv
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if keep_first:  # the iterate this forward pass saw: keep it for the examples it fools first (a select,
                newly = (logits.detach().argmax(1) != y) & ~fooled  # not boolean indexing: no host read on a GPU)
                kept, fooled = torch.where(newly.view(-1, *[1] * (x.dim() - 1)), x_adv.detach(), kept), fooled | newly
            objective = (F.cross_entropy(logits, y, reduction="sum") if loss == "ce"
                         else kl_from_logits(target, logits, reduction="sum"))
            grad, = torch.autograd.grad(objective, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
            yield torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), kept, x_adv) if keep_first else x_adv


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        loss: str = "ce", random_start: bool = True, generator: torch.Generator | None = None,
        last_iterate: bool = False) -> torch.Tensor:
    """Projected gradient ascent (Madry et al.) in the L-inf ball of radius eps around x, inside [0, 1].

    loss="ce": cross-entropy with the labels (evaluation, the paper's RA; an example counts as broken if any
    iterate fooled the model, see `pgd_iterates`). loss="kl": KL between the
    clean and the perturbed prediction (the TRADES inner maximisation used in training). The model runs
    in eval mode; the gradient through MoE routing (straight-through gate) reaches the input, so the
    router is attacked too. The model's train/eval state and requires_grad flags are restored.
    """
    for x_adv in pgd_iterates(model, x, y, eps, step_size, steps, loss, random_start, generator, last_iterate):
        pass
    return x_adv.detach()


TARGETS = ("model", "experts", "router")  # what a component attack aims at (`component_attack`)


def component_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
                     target: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image, is the model still right after an attack aimed at one of its parts (the dual-model paper's
    vulnerability analysis; their exact definitions are not public, these are the book's):

    - "model": PGD on the whole MoE, the prediction of the whole MoE (RA);
    - "experts": PGD with every MoE layer's routing held at the image's clean choice, the prediction with the routing
      still held there: how robust the experts are where the router sends the clean image (RA-E);
    - "router": PGD on the router's scores (cross-entropy against its clean choice, so the attack seeks another
      route), the prediction of the whole MoE with the experts as they are (RA-R). The MoE's router must see the
      input itself (`models.NetworkMoE`).

    Returns a bool tensor (n,): True where the model is still right. The model runs in eval mode throughout."""
    from .models import NetworkMoE, fixed_routing, record_routing

    if target not in TARGETS:
        raise ValueError(f"unknown attack target {target!r}; allowed: {', '.join(TARGETS)}")
    if target == "model":
        x_adv = pgd(model, x, y, eps, step_size, steps, generator=generator)
        with torch.no_grad(), frozen_eval(model):
            return model(x_adv).argmax(1) == y
    with torch.no_grad(), frozen_eval(model), record_routing(model) as routes:
        model(x)
    if target == "experts":
        with fixed_routing(model, dict(routes)):
            x_adv = pgd(model, x, y, eps, step_size, steps, generator=generator)
            with torch.no_grad(), frozen_eval(model):
                return model(x_adv).argmax(1) == y
    if not isinstance(model, NetworkMoE):
        raise ValueError("the router attack needs a network MoE (its router sees the image), got "
                         f"{type(model).__name__}")
    x_adv = pgd(model.router, x, routes["moe"].to(x.device), eps, step_size, steps, generator=generator)
    with torch.no_grad(), frozen_eval(model):
        return model(x_adv).argmax(1) == y


AA_VERSIONS = ("standard", "apgd-ce")  # apgd-ce: APGD-CE alone (the smoke preset's cheap stand-in)


def _autoattack_class():
    """The official `autoattack` package when installed, else `pyautoattack` (PyPI; the same attack code)."""
    try:
        from autoattack import AutoAttack
        return AutoAttack, "autoattack"
    except ImportError:
        from pyautoattack import AutoAttack
        return AutoAttack, "pyautoattack"


@contextlib.contextmanager
def _library_messages():
    """Collect what AutoAttack says: warnings (its checks) and its per-attack robust accuracy log lines."""
    found = {"warnings": [], "ra_after_each": {}}
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger, handler = logging.getLogger("auto-attack"), Keep(logging.DEBUG)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # kept here, not printed
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        said = [str(w.message) for w in caught] + [r.getMessage() for r in records if r.levelno >= logging.WARNING]
        found["warnings"] += list(dict.fromkeys(said))  # each once, in the order first said
        for r in records:
            text = r.getMessage()
            m = re.match(r"robust accuracy after (\S+): ([\d.]+)%", text)
            if m:
                found["ra_after_each"][m.group(1).lower()] = float(m.group(2)) / 100


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
               n: int | None = None, batch_size: int = 250, seed: int = 0) -> dict:
    """Robust accuracy under AutoAttack (Croce & Hein 2020) for L-inf on inputs in [0, 1], through the real library.

    version "standard": APGD-CE, APGD-T, FAB-T, Square; "apgd-ce": APGD-CE alone. n: the first n examples.
    RA-AA is recomputed here from the returned examples, after checking they stay in the eps-ball and [0, 1].
    """
    check_attack(eps, 0.0, 0)
    if version not in AA_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; allowed: {', '.join(AA_VERSIONS)}")
    if n is not None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1 (or None for all), got {n!r}")
        x, y = x[:n], y[:n]
    cls, library = _autoattack_class()
    device = x.device
    args = dict(norm="Linf", eps=eps, seed=seed, device=device)
    if version == "standard":
        args["version"] = "standard"
    else:
        args.update(version="custom", **({"attacks_to_run": ["apgd-ce"]} if library == "autoattack"
                                         else {"attacks": ["apgd-ce"]}))
    t0 = time.perf_counter()
    with frozen_eval(model), _library_messages() as messages:
        adversary = cls(model, verbose=False, **args) if library == "autoattack" else cls(model, **args)
        if version == "apgd-ce":
            adversary.apgd.n_restarts = 1  # as in the standard version
        if library == "autoattack":
            x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        else:
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        with torch.no_grad():
            correct = torch.cat([(model(x_adv[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu()
                                 for i in range(0, len(x), batch_size)])
    max_perturbation = float((x_adv - x).abs().max()) if len(x) else 0.0
    if max_perturbation > eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"AutoAttack returned examples outside the eps-ball or [0, 1] (max |delta| "
                           f"{max_perturbation:.5f} > eps {eps:.5f}); refusing to report a robust accuracy")
    return {"ra_aa": float(correct.float().mean()), "version": version, "library": library, "n": len(x), "eps": eps,
            "seconds": time.perf_counter() - t0, "max_perturbation": max_perturbation,
            "correct": bits(correct),
            # AutoAttack's own checks (randomness, probabilities as outputs, dynamic models, Square beating the
            # white-box attacks ...) and its robust accuracy after each attack, as the library reported them
            "warnings": messages["warnings"], "ra_after_each": messages["ra_after_each"]}


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int = 5000,
           seed: int = 0) -> torch.Tensor:
    """Square Attack (Andriushchenko et al. 2020), the black-box part of AutoAttack, from the same library.

    It needs only the model's outputs, so masked or broken gradients cannot stop it.
    """
    check_attack(eps, 0.0, 0)
    if not isinstance(n_queries, int) or n_queries < 1:
        raise ValueError(f"n_queries must be an integer >= 1, got {n_queries!r}")
    try:
        from autoattack.square import SquareAttack
    except ImportError:
        from pyautoattack.square import SquareAttack
    with frozen_eval(model):
        attack = SquareAttack(model, norm="Linf", n_queries=n_queries, eps=eps, p_init=0.8, n_restarts=1,
                              seed=seed, verbose=False, resc_schedule=False, device=x.device)
        return attack.perturb(x, y).detach()
