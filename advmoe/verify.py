"""`advmoe verify`: re-train a stored experiment from scratch and compare it with what is stored.

Verdicts, per experiment:
  bit-identical        the same trained weights (model_sha256: the checkpoint's weights) and every stored
                       metric equal: nothing in the way the result was made has changed (expected on any
                       x86-64 machine with AVX2 when both runs used the pinned numerics, the same torch
                       and the same decoded data);
  within seed spread   metrics differ, but by less than two seed standard deviations of that model (the
                       noise a reader must allow for anyway);
  outside seed spread  they differ by more: a bug, or a change that matters.
Where bit-identity cannot be expected (the pin off or impossible, another torch, other decoded data, a GPU),
the report says why in one line and only the seed-spread comparison counts.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from . import experiments as ex
from .io import atomic_write_json, read_json

VERDICTS = ("bit-identical", "within seed spread", "outside seed spread", "not comparable")


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Every number of a result that verify compares: the final metrics and the per-epoch history."""
    out: dict[str, float] = {}

    def walk(prefix, value):
        if isinstance(value, (int, float)):  # bools too
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)

    walk("final", metrics["final"])
    for h in metrics["history"]:
        for k in ("train_loss", "train_accuracy", "test_sa", "test_ra_tracked"):  # the last since tracking exists
            if k in h:
                out[f"history[{h['epoch']}].{k}"] = float(h[k])
    return out


def why_not_identical(stored: dict, fresh: dict) -> str | None:
    """One line saying why bit-identity cannot be expected between two runs, or None if it can."""
    a, b = stored["provenance"], fresh["provenance"]
    for name, p in (("the stored run", a), ("this run", b)):
        if p["device"] != "cpu":
            return f"{name} used {p['device']}: GPU kernels are not bit-reproducible across machines"
        numerics = p.get("numerics")
        if numerics is None:
            return f"{name} predates pinned numerics (no record of its kernels)"
        if not numerics["pinned"]:
            return f"{name} did not use the pinned numerics: {numerics['why_not']}"
    if a["versions"]["torch"] != b["versions"]["torch"]:
        return f"torch differs: {a['versions']['torch']} stored, {b['versions']['torch']} now"
    for split in ("train", "test"):
        if stored["data"].get(f"{split}_sha256") != fresh["data"].get(f"{split}_sha256"):
            return (f"the decoded {split} images differ (Pillow {a['versions'].get('pillow', '?')} stored, "
                    f"{b['versions'].get('pillow', '?')} now)" if stored["data"].get(f"{split}_sha256")
                    else f"the stored run recorded no fingerprint of its {split} images")
    return None


def seed_spread(spec: ex.ExperimentSpec, root: Path | None = None) -> dict[str, float]:
    """Standard deviation over the stored seeds of this model (same spec but the seed), per final metric."""
    values: dict[str, list[float]] = {}
    for seed in range(32):
        try:
            m = ex.load(spec.with_seed(seed), root)
        except FileNotFoundError:
            continue
        for k in ("sa", "ra"):
            values.setdefault(k, []).append(m["final"][k])
    return {k: statistics.stdev(v) for k, v in values.items() if len(v) >= 2}


def compare(spec: ex.ExperimentSpec, stored: dict, fresh: dict, root: Path | None = None) -> dict:
    """The verdict and the per-metric differences between a stored result and a fresh re-run."""
    a, b = flat_metrics(stored), flat_metrics(fresh)
    differ = {k: b[k] - a[k] for k in a if k in b and a[k] != b[k]}
    for kind, bits in stored["final"].get("correct", {}).items():  # images whose correctness changed
        changed = sum(x != y for x, y in zip(bits, fresh["final"].get("correct", {}).get(kind, "")))
        if changed or len(bits) != len(fresh["final"].get("correct", {}).get(kind, "")):
            differ[f"final.correct.{kind} (images changed)"] = changed
    same_model = stored.get("model_sha256") == fresh["model_sha256"]
    why_not = why_not_identical(stored, fresh)
    spread = seed_spread(spec, root)
    diffs = {k: fresh["final"][k] - stored["final"][k] for k in ("sa", "ra")}
    if same_model and not differ:
        verdict, detail = "bit-identical", "the trained weights (sha256) and every metric equal"
    elif not spread:
        verdict = "not comparable"
        detail = "metrics differ and only one seed is stored, so the seed spread is unknown"
    else:
        outside = [k for k, d in diffs.items() if k in spread and abs(d) > 2 * spread[k]]
        verdict = "outside seed spread" if outside else "within seed spread"
        detail = ", ".join(f"{k.upper()} {100 * d:+.2f} pp (2 seed SD {200 * spread[k]:.2f})"
                           for k, d in diffs.items() if k in spread)
    if verdict != "bit-identical":
        expected = "bit-identity was not expected: " + why_not if why_not else \
            "NOT bit-identical although both runs used the pinned numerics, the same torch and the same data"
        detail = f"{expected}; {detail}"
    return {"name": spec.name, "hash": spec.hash, "verdict": verdict, "detail": detail,
            "same_weights": same_model, "metrics_compared": len(a), "metrics_differing": len(differ),
            "largest_differences": dict(sorted(differ.items(), key=lambda kv: -abs(kv[1]))[:5]),
            "final_differences": diffs, "seed_spread": spread, "why_not_bit_identical": why_not,
            "stored_provenance": {k: stored["provenance"].get(k) for k in ("git_commit", "device_name", "numerics")},
            "fresh_provenance": {k: fresh["provenance"].get(k) for k in ("git_commit", "device_name", "numerics")}}


def verify_path(spec: ex.ExperimentSpec, root: Path | None = None) -> Path:
    return Path(root or ex.results_root()) / spec.preset / "verify" / f"{spec.name}-{spec.hash}.json"


def verify(spec: ex.ExperimentSpec, device: str = "cpu", root: Path | None = None, progress: bool = True) -> dict:
    """Re-train `spec` from scratch in a scratch directory, compare with the stored result, store the report."""
    stored = ex.load(spec, root)  # FileNotFoundError (one line) when there is nothing to verify
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="advmoe-verify-") as scratch:
        fresh = ex.run(spec, device, Path(scratch), progress)
    report = {**compare(spec, stored, fresh, root), "seconds": time.perf_counter() - t0,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return atomic_write_json(report, verify_path(spec, root))


def last_reports(preset: str, root: Path | None = None) -> list[dict]:
    """Every stored verify report of a preset (the status page shows them)."""
    folder = Path(root or ex.results_root()) / preset / "verify"
    return [r for p in sorted(folder.glob("*.json")) if (r := read_json(p)) is not None] if folder.is_dir() else []
