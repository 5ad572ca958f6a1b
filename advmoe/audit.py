"""A gradient-masking audit of a trained model: seven checks, each a number and a pass/fail, stored beside it.

MoE models route each input through a data-dependent, non-differentiable choice, exactly the kind of model
whose PGD robust accuracy (RA) can look better than it is. Each check compares attacks on the same
examples (a fixed, class-balanced subset of the experiment's test set) and allows for test-set noise:
`tolerance(p, n)` is two binomial standard errors. What each check means: `CHECKS` (shown in the book).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as datalib
from . import experiments as ex
from .attacks import frozen_eval, pgd, pgd_iterates, square
from .models import fixed_routing, moe_layers, record_routing, soft_routing

LARGE_EPS = 64 / 255
CHECKS = {  # letter -> (title, what it means; shown on the audit page)
    "a": ("RA at eps 0 equals SA",
          "An attack with no budget cannot change a prediction, so robust accuracy at eps 0 must equal clean "
          "accuracy exactly. A difference means the evaluation itself is inconsistent: the model is random at "
          "test time, the data differ between the two measurements, or the model is not in eval mode."),
    "b": ("RA non-increasing in eps and in PGD steps",
          "A larger ball contains the smaller one and more steps continue the same ascent, so robust accuracy "
          "should not rise with eps or with steps. PGD keeps each image's first fooling iterate (as every PGD "
          "number in this book does), so within one run RA cannot rise with steps: that curve shows whether more "
          "steps still find adversarial examples (a flat tail: the attack has converged). Each eps is a separate "
          "run on the same images, and RA must not rise with eps at all (0, 4 and 8/255 on the test set): a rise "
          "means the attack's optimisation is failing, typically because the loss surface is flat or noisy."),
    "c": ("RA at a large eps is about 0",
          "At eps 64/255 an attacker can wash out most of the image; any model should be driven to about zero "
          "robust accuracy. If it is not, the gradient does not point anywhere useful: gradient masking."),
    "d": ("Black-box Square RA >= white-box RA",
          "Square Attack uses only the model's outputs. A white-box attack, which also sees the gradients, "
          "should do at least as well; if Square finds clearly more adversarial examples than PGD, the "
          "gradients are misleading PGD (masked, shattered or obfuscated)."),
    "e": ("AutoAttack RA <= PGD RA",
          "AutoAttack (APGD-CE, APGD-T, FAB-T, Square) is a stronger, parameter-free evaluation. Its robust "
          "accuracy should not exceed PGD's on the same examples; it usually lies a little below. A large gap "
          "below PGD says the reported PGD number overstates robustness."),
    "f": ("Router-aware and transfer attacks do not beat PGD",
          "An MoE's routing is a discrete choice: the straight-through gradient PGD follows may not see what a "
          "routing switch would do. Two surrogate attacks aim at the router: one through a soft mixture of all "
          "experts weighted by the router's probabilities, one with the routing held at the clean input's "
          "choice. A transfer attack crafts examples on the S-Dense model. Each example counts as broken if "
          "any of these or PGD breaks it; this worst case must not fall below PGD's RA by more than noise."),
    "g": ("Input gradients are non-zero and finite",
          "PGD climbs the loss gradient with respect to the input. If it is zero (saturated softmax, dead "
          "routing paths) or not finite, the attack cannot move and robust accuracy is overstated."),
}


def settings(preset: str) -> dict:
    """Number of audited examples, the PGD steps checked, Square's query budget, per preset."""
    if preset == "smoke":
        return dict(n=16, steps=(2, 4, 8), square_queries=20)
    if preset == "cpu":  # measured: see the audit page (about 3-7 min per model on one core)
        return dict(n=500, steps=(10, 20, 50, 100), square_queries=1000)
    if preset == "gpu":  # the examples AutoAttack sees at this preset
        return dict(n=1000, steps=(10, 20, 50, 100), square_queries=5000)
    if preset == "paper":
        return dict(n=None, steps=(10, 20, 50, 100), square_queries=5000)
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(ex.PRESETS)}")


def tolerance(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy p on n examples (p clipped away from 0 and 1)."""
    q = min(max(p, 1 / n), 1 - 1 / n)
    return 2 * math.sqrt(q * (1 - q) / n)


def transfer_source(spec: ex.ExperimentSpec) -> ex.ExperimentSpec | None:
    """The S-Dense model a transfer attack starts from: same preset and training, AT for AdvMoE."""
    if spec.kind == "s-dense":
        return None
    method = "at" if spec.method == "advmoe" else spec.method
    return spec.replace(kind="s-dense", method=method, scale=0.5, n_experts=2, router="per-layer")


def _predict(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def _router_attacks(model, x, y, attack) -> dict[str, torch.Tensor]:
    """Correct-per-example of the real model on examples crafted through the two routing surrogates."""
    with soft_routing(model):
        soft = attack(model, x, y)
    with record_routing(model) as routes, torch.no_grad():
        model.eval()
        model(x)
    with fixed_routing(model, dict(routes)):
        fixed = attack(model, x, y)
    return {"soft-routing": _predict(model, soft, y), "fixed-routing": _predict(model, fixed, y)}


def _input_gradients(model, x, y) -> tuple[int, int]:
    """(examples whose input gradient of the CE loss is all zero, examples with a non-finite one)."""
    with frozen_eval(model):
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    flat = grad.flatten(1)
    return int((flat == 0).all(1).sum()), int((~torch.isfinite(flat)).any(1).sum())


def measure(model, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, eval_steps: int,
            steps=(10, 20, 50, 100), square_queries: int = 1000, source=None, seed: int = 0,
            batch_size: int = 250, progress: bool = False, desc: str = "audit") -> dict:
    """Every attack the checks compare, on the same examples: RA per attack and the input-gradient counts.

    PGD-k for each k in steps is the k-th iterate of one run (same start), so the step counts are compared
    on equal terms; PGD-eval_steps is the reported attack. source: a model for the transfer attack.
    """
    from tqdm import tqdm

    steps = sorted(set(steps) | {eval_steps})
    generator = torch.Generator(x.device).manual_seed(seed)

    def attack(m, xb, yb):
        return pgd(m, xb, yb, eps, step_size, eval_steps, generator=generator)

    correct: dict[str, list[torch.Tensor]] = {}
    zero_grads = nonfinite_grads = 0
    is_moe = bool(moe_layers(model))
    for s in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        model.eval()
        found = {"clean": _predict(model, xb, yb),
                 "eps0": _predict(model, pgd(model, xb, yb, 0.0, step_size, 1, generator=generator), yb)}
        for k, x_adv in enumerate(pgd_iterates(model, xb, yb, eps, step_size, max(steps), generator=generator), 1):
            if k in steps:
                found[f"pgd-{k}"] = _predict(model, x_adv, yb)
        found["large-eps"] = _predict(model, pgd(model, xb, yb, LARGE_EPS, 2.5 * LARGE_EPS / eval_steps, eval_steps,
                                                 generator=generator), yb)
        found["square"] = _predict(model, square(model, xb, yb, eps, square_queries, seed=seed), yb)
        if source is not None:
            found["transfer"] = _predict(model, attack(source, xb, yb), yb)
        if is_moe:
            found.update(_router_attacks(model, xb, yb, attack))
        for k, c in found.items():
            correct.setdefault(k, []).append(c)
        z, nf = _input_gradients(model, xb, yb)
        zero_grads, nonfinite_grads = zero_grads + z, nonfinite_grads + nf
    correct_all = {k: torch.cat(v) for k, v in correct.items()}
    worst = correct_all[f"pgd-{eval_steps}"].clone()
    for k in ("transfer", "soft-routing", "fixed-routing"):
        if k in correct_all:
            worst &= correct_all[k]
    ra = {k: float(v.float().mean()) for k, v in correct_all.items()}
    ra["worst-case (f)"] = float(worst.float().mean())
    return {"n": len(x), "ra": ra, "steps": steps, "eval_steps": eval_steps, "eps": eps, "large_eps": LARGE_EPS,
            "square_queries": square_queries, "zero_gradient_examples": zero_grads,
            "nonfinite_gradient_examples": nonfinite_grads}


def run_audit(spec: ex.ExperimentSpec, model, device, root: Path | None = None, progress: bool = True,
              batch_size: int = 250) -> dict:
    """Audit a trained model: `measure` on its audit subset, plus its stored metrics and AutoAttack result."""
    cfg = settings(spec.preset)
    metrics = ex.load(spec, root)
    source_spec = transfer_source(spec)
    source = ex.trained_model(source_spec, str(device), root, progress).to(device) if source_spec else None
    test = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=ex.SUBSET_SEED).subset(cfg["n"], ex.SUBSET_SEED)
    raw = measure(model, datalib.to_float(test.images, device), test.labels.to(device), spec.eval_eps,
                  spec.eval_step_size, spec.eval_steps, cfg["steps"], cfg["square_queries"], source, spec.seed,
                  batch_size, progress, f"audit {spec.name}")
    aa = ex.autoattack_eval(spec, str(device), root, progress=progress)
    raw.update(transfer_source=source_spec.name if source_spec else None,
               autoattack={**{k: aa[k] for k in ("ra_aa", "ra_pgd_same_examples", "n", "version", "seconds")},
                           **{k: aa.get(k) for k in ("warnings", "ra_after_each")}},
               stored_metrics={k: metrics["final"][k] for k in ("sa", "ra", "ra_by_eps", "sanity")})
    return {**raw, "checks": checks(raw)}


AUTOATTACK_WARNING = (
    "AutoAttack checks its own evaluation and warns when a model behaves unlike the models it was designed for. The "
    "warning seen here, \"Square Attack has decreased the robust accuracy\", means the black-box Square attack, run "
    "last, still broke images that the white-box attacks before it (APGD-CE, APGD-T, FAB-T) had left standing. A model "
    "whose gradients are informative should not let a black-box attack do better; its authors read it as a hint that "
    "gradient-based attacks overestimate the robustness and suggest more queries or adaptive attacks (AutoAttack's "
    "flags_doc.md). An MoE's routing is such a feature: the straight-through gradient does not see a routing switch. "
    "RA-AA already counts the images Square broke, but the paper's metric (RA-PGD) does not, so a model with this "
    "warning never shows as plainly passing. What the book does about it: the headline robust accuracy is the "
    "per-image worst case over PGD, AutoAttack (Square included) and adaptive attacks aimed at the routing (APGD through "
    "the soft-routing surrogate and on each forced-expert pathway), so every image any of them breaks counts as broken.")


def checks(raw: dict) -> dict[str, dict]:
    """The seven checks from the raw numbers: {letter: {title, passed, detail}}; passed None = not applicable. Check
    (e) also carries AutoAttack's own `warnings` when it gave any (`warned`)."""
    n, ra = raw["n"], raw["ra"]
    steps, stored, aa = raw["steps"], raw.get("stored_metrics"), raw.get("autoattack")
    pgd_key = f"pgd-{raw['eval_steps']}"  # the reported attack (PGD-eval_steps), on the audit subset
    out = {}

    def put(letter, passed, detail):
        out[letter] = {"title": CHECKS[letter][0], "passed": passed, "detail": detail}

    put("a", ra["eps0"] == ra["clean"] and (stored is None or stored["sanity"]["ra_eps0_equals_sa"]),
        f"audit subset: RA(0) {100 * ra['eps0']:.2f}% vs SA {100 * ra['clean']:.2f}%" +
        (f"; test set: RA(0) {100 * stored['ra_by_eps']['0/255']:.2f}% vs SA {100 * stored['sa']:.2f}%" if stored else ""))
    by_steps = [ra[f"pgd-{k}"] for k in steps]
    tol_b = tolerance(by_steps[0], n)
    rises = [(a, b) for a, b in zip(by_steps, by_steps[1:]) if b > a + tol_b]
    put("b", not rises and (stored is None or stored["sanity"]["ra_nonincreasing_in_eps"]),
        "RA by PGD steps " + ", ".join(f"{k}: {100 * r:.2f}%" for k, r in zip(steps, by_steps)) +
        f" (tolerance {100 * tol_b:.2f} pp)" +
        ("; by eps (test set) " + ", ".join(f"{e}: {100 * r:.2f}%" for e, r in stored["ra_by_eps"].items())
         if stored else ""))
    threshold = max(0.02, 1 / n)
    put("c", ra["large-eps"] <= threshold,
        f"RA at eps {raw['large_eps'] * 255:.0f}/255: {100 * ra['large-eps']:.2f}% (threshold {100 * threshold:.2f}%)")
    tol = tolerance(ra[pgd_key], n)
    put("d", ra["square"] >= ra[pgd_key] - tol,
        f"Square ({raw['square_queries']:,} queries) {100 * ra['square']:.2f}% vs {pgd_key.upper()} "
        f"{100 * ra[pgd_key]:.2f}% (tolerance {100 * tol:.2f} pp)")
    if aa is None:
        put("e", None, "AutoAttack not run")
    else:
        tol_e = tolerance(aa["ra_pgd_same_examples"], aa["n"])
        put("e", aa["ra_aa"] <= aa["ra_pgd_same_examples"] + tol_e,
            f"AutoAttack ({aa['version']}, n = {aa['n']}) {100 * aa['ra_aa']:.2f}% vs PGD "
            f"{100 * aa['ra_pgd_same_examples']:.2f}% on the same examples (tolerance {100 * tol_e:.2f} pp)")
        if aa.get("warnings"):  # AutoAttack's own checks doubt its evaluation (`AUTOATTACK_WARNING`)
            out["e"]["warnings"] = list(aa["warnings"])
            out["e"]["detail"] += "; AutoAttack warned that its evaluation may be unreliable"
    extra = [k for k in ("soft-routing", "fixed-routing", "transfer") if k in ra]
    put("f", (ra["worst-case (f)"] >= ra[pgd_key] - tol) if extra else None,
        (", ".join(f"{k} {100 * ra[k]:.2f}%" for k in extra) +
         f"; worst case per example {100 * ra['worst-case (f)']:.2f}% vs {pgd_key.upper()} {100 * ra[pgd_key]:.2f}% "
         f"(tolerance {100 * tol:.2f} pp)") if extra else "no router and no transfer source (S-Dense itself)")
    put("g", raw["zero_gradient_examples"] <= 0.01 * n and raw["nonfinite_gradient_examples"] == 0,
        f"{raw['zero_gradient_examples']} of {n} examples with an all-zero input gradient, "
        f"{raw['nonfinite_gradient_examples']} non-finite")
    return out



def _path(spec: ex.ExperimentSpec, root: Path | None = None) -> Path:
    key = hashlib.sha256(json.dumps(settings(spec.preset), sort_keys=True).encode()).hexdigest()[:8]
    return ex.result_dir(spec, root) / f"audit-{key}.json"


def stored(spec: ex.ExperimentSpec, root: Path | None = None) -> dict | None:
    """The stored audit of a model, or None (never computes); its checks decided from its raw numbers by `checks`."""
    result = ex.read_evaluation(_path(spec, root), spec, root)
    return None if result is None else {**result, "checks": checks(result)}


def audit(spec: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
          progress: bool = True, position: int = 0) -> dict:
    """The stored audit of a trained model (audit-<settings>.json beside its metrics), computing it if missing.

    The model is trained first if it has no result; the audit is dropped whenever the model is retrained.
    """
    ex.get(spec, device, root, progress=progress, position=position)
    ex.autoattack_eval(spec, device, root, progress=progress)  # first, so the audit's own time excludes it
    result = ex.evaluation(spec, _path(spec, root).name, lambda model, dev: run_audit(spec, model, dev, root, progress),
                           device, root, recompute, progress)
    return {**result, "checks": checks(result)}


def failed(result: dict) -> list[str]:
    """The letters of the checks a stored audit fails (not-applicable checks never fail)."""
    return [letter for letter, c in result["checks"].items() if c["passed"] is False]


def warned(result: dict) -> list[str]:
    """The letters of the checks that carry AutoAttack's own warnings (`AUTOATTACK_WARNING`), passed or not."""
    return [letter for letter, c in result["checks"].items() if c.get("warnings")]


def status(result: dict) -> str:
    """One word for a model's audit: "failed" (any check), "warned" (none failed, AutoAttack warned), "passed"."""
    return "failed" if failed(result) else "warned" if warned(result) else "passed"
