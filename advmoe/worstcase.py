"""The headline robust accuracy: per example, the worst case over every strong attack (RobustBench's rule).

An example counts as robust only if no attack below breaks it. On the AutoAttack images of a model (the
same fixed subset, so every column is paired), in this order, each attack running only on the examples
still robust after the ones before it (as AutoAttack itself does):

  pgd            the paper's PGD-CE (stored with the AutoAttack result)
  autoattack     AutoAttack: APGD-CE, APGD-T (targeted DLR), FAB-T, Square (stored)
  apgd-dlr       APGD on the untargeted DLR loss, through the straight-through gate
  soft-apgd-ce   APGD-CE and APGD-T crafted on the soft-routing surrogate (every expert, weighted by its
  soft-apgd-t    router probability: a smooth path to the routing decision), then run on the real model
  expert-<e>     every sample forced to expert e in every MoE layer (the Robust Experts paper's per-expert
                 evaluation): APGD-CE crafted on that fixed pathway, then run on the real model. A model with
                 Robust Experts' top-k layers (`advmoe.models.topk`: a few MoE layers, each with its own gate)
                 gets one such attack per layer and expert instead, `expert-<e>@<layer>`: the other layers route as
                 usual, so every gate is attacked through each of its experts

Gradient masking by routing shows as attacks after `pgd` breaking examples that PGD left standing; the
result stores how many each attack adds, so a page can say which attack made the difference.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from . import data as datalib
from . import experiments as ex
from .attacks import check_attack, frozen_eval
from .io import bits, from_bits
from .models import TopKMoE, forced_expert, moe_layers, soft_routing

APGD_ITERATIONS = 100  # AutoAttack's own setting
SOFT_TARGETS = 3  # APGD-T on the surrogate: the 3 most likely wrong classes (AutoAttack uses 9 on the model)


def _apgd(kind: str):
    try:
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    except ImportError:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    return APGDAttack_targeted if kind == "targeted" else APGDAttack


def apgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce", targets: int = 0,
         seed: int = 0, iterations: int = APGD_ITERATIONS) -> torch.Tensor:
    """Adversarial examples by the library's APGD (loss "ce" or "dlr"; targets > 0: APGD-T on that many classes),
    one restart, in eval mode. iterations: AutoAttack's 100, or e.g. the 20 of Robust Experts' "AutoPGD"."""
    check_attack(eps, 0.0, iterations)
    with frozen_eval(model):
        if targets:
            attack = _apgd("targeted")(model, n_iter=iterations, norm="Linf", n_restarts=1, eps=eps, seed=seed,
                                       n_target_classes=targets, device=x.device)
        else:
            attack = _apgd("untargeted")(model, n_iter=iterations, norm="Linf", n_restarts=1, eps=eps,
                                         seed=seed, loss=loss, device=x.device)
        return attack.perturb(x, y).detach()


def attacks(model) -> list[tuple[str, object, dict]]:
    """(name, surrogate context factory, APGD arguments) of the attacks run after PGD and AutoAttack."""
    out = [("apgd-dlr", contextlib.nullcontext, dict(loss="dlr"))]
    layers = moe_layers(model)
    if layers:
        out += [("soft-apgd-ce", lambda: soft_routing(model), dict(loss="ce")),
                ("soft-apgd-t", lambda: soft_routing(model), dict(targets=SOFT_TARGETS))]
        if any(isinstance(m, TopKMoE) for m in layers.values()):
            out += [(f"expert-{e}@{name}", lambda e=e, name=name: forced_expert(model, e, name), dict(loss="ce"))
                    for name, m in layers.items() for e in range(m.n_experts)]
        else:
            n = min(m.n_experts for m in layers.values())
            out += [(f"expert-{e}", lambda e=e: forced_expert(model, e), dict(loss="ce")) for e in range(n)]
    return out


def _correct(model, x, y) -> torch.Tensor:
    with torch.no_grad(), frozen_eval(model):
        return (model(x).argmax(1) == y).cpu()


def worst_case(model, x: torch.Tensor, y: torch.Tensor, eps: float, found: dict[str, torch.Tensor],
               seed: int = 0, skip: tuple[str, ...] = ()) -> dict:
    """Run `attacks(model)` (but those named in `skip`) after the per-example results already `found` (e.g. PGD and
    AutoAttack, bool tensors of "still correct"), each on the examples every earlier attack left correct.

    Returns the robust accuracy after each attack, how many examples each one broke that the earlier ones
    did not, the per-example worst case, and the clean accuracy of each forced-expert pathway.
    """
    robust = torch.ones(len(x), dtype=torch.bool)
    steps, extra_broken, seconds = {}, {}, {}
    for name, correct in found.items():
        before = int(robust.sum())
        robust &= correct.cpu()
        steps[name], extra_broken[name], seconds[name] = float(robust.float().mean()), before - int(robust.sum()), 0.0
    expert_clean = {}
    for name, surrogate, args in attacks(model):
        if name in skip:
            continue
        t0 = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        if name.startswith("expert-"):
            with surrogate():
                expert_clean[name] = float(_correct(model, x, y).float().mean())
        if len(idx):
            with surrogate():
                x_adv = apgd(model, x[idx], y[idx], eps, seed=seed, **args)
            broken = ~_correct(model, x_adv, y[idx])  # judged on the real model, with its own routing
            robust[idx[broken]] = False
            extra_broken[name] = int(broken.sum())
        else:
            extra_broken[name] = 0
        steps[name], seconds[name] = float(robust.float().mean()), time.perf_counter() - t0
    return {"ra_worst": float(robust.float().mean()), "ra_after_each": steps, "broken_by_each": extra_broken,
            "seconds_each": seconds, "order": list(steps), "expert_clean_accuracy": expert_clean,
            "correct_worst": bits(robust)}


def _file(spec: ex.ExperimentSpec) -> str:
    version, n = ex.autoattack_settings(spec.preset)
    return f"worst-case-{version}-n{n or 'all'}.json"


def stored_worst_case(spec: ex.ExperimentSpec, root: Path | None = None) -> dict | None:
    """The stored worst case of a model (`worst_case_eval`), or None; never computes."""
    return ex.read_evaluation(ex.result_dir(spec, root) / _file(spec), spec, root)


def worst_case_eval(spec: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None,
                    recompute: bool = False, progress: bool = True, position: int = 0) -> dict:
    """The stored worst-case robust accuracy of a trained model (worst-case-<AutoAttack setting>.json),
    computed on its AutoAttack images after AutoAttack itself (computed first if missing)."""
    aa = ex.autoattack_eval(spec, device, root, progress=progress)
    if "correct" not in aa or "correct_pgd" not in aa:  # stored before per-example results were kept
        aa = ex.autoattack_eval(spec, device, root, recompute=True, progress=progress)
    version, n = ex.autoattack_settings(spec.preset)

    def compute(model, dev):
        test = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=ex.SUBSET_SEED).subset(n, ex.SUBSET_SEED)
        x, y = datalib.to_float(test.images, dev), test.labels.to(dev)
        found = {f"pgd-{aa['pgd_steps']}": from_bits(aa["correct_pgd"]),
                 f"autoattack ({version})": from_bits(aa["correct"])}
        return {**worst_case(model, x, y, spec.eval_eps, found, seed=spec.seed), "n": len(y),
                "ra_pgd_same_examples": aa["ra_pgd_same_examples"], "ra_aa": aa["ra_aa"],
                "autoattack_warnings": aa.get("warnings", [])}

    return ex.evaluation(spec, _file(spec), compute, device, root, recompute, progress)
