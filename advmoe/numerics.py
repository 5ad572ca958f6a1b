"""Pinned CPU numerics: the same kernels, hence the same bits, on every x86-64 machine with AVX2.

Which kernels torch runs on a CPU follows the CPU: ATen dispatches to its DEFAULT, AVX2 or AVX512 builds,
oneDNN (convolutions) and MKL (matrix products) pick their own code paths, and the thread count changes the
order of reductions. Each choice changes the last bits of every gradient, and over a training run those bits
grow into a different model (measured: RA 18.1 vs 20.4 for the same spec on two machines of one kind).

`pin_environment()` runs when `advmoe` is imported, before torch runs any kernel (both ATen and oneDNN read
their setting once, at their first use), and fixes every choice to one that every x86-64 CPU with AVX2
honours: ATen AVX2, oneDNN AVX2, MKL's AVX2 code path, one thread per process (`use_pinned_threads`; run
several experiments at once with --jobs instead). Whatever the user exported is overridden: stored results
must not depend on it. `ADVMOE_NUMERICS=native` (or the CLI's --native-numerics) turns the pin off for speed,
and `state()`, recorded in every result's provenance, says what was actually in effect.
"""
from __future__ import annotations

import os
import platform

PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
PIN_THREADS = 1
SWITCH = "ADVMOE_NUMERICS"
MODES = ("pinned", "native")


def mode() -> str:
    return os.environ.get(SWITCH, "pinned")


def check() -> None:
    """Raise ValueError (one line) if ADVMOE_NUMERICS holds an unknown value."""
    if mode() not in MODES:
        raise ValueError(f"{SWITCH}={mode()!r} is not allowed; use one of {', '.join(MODES)} (or unset it)")


def pin_environment() -> None:
    """Set the pinned kernel choices in the environment (a no-op with ADVMOE_NUMERICS=native)."""
    if mode() == "pinned":
        os.environ.update(PIN)


def use_pinned_threads() -> None:
    """One thread per process when pinned (thread count changes reduction order); call before compute."""
    import torch

    if mode() == "pinned" and torch.get_num_threads() != PIN_THREADS:
        torch.set_num_threads(PIN_THREADS)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions the CPU reports that decide kernel dispatch (avx2, avx512f, ...)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(f for f in line.split(":", 1)[1].split()
                                  if f in ("avx", "avx2", "fma") or f.startswith("avx512") or f.startswith("amx"))
    except OSError:
        pass
    return []


def state() -> dict:
    """What is in effect now: recorded in provenance, read by `advmoe verify`."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    requested = mode() == "pinned"
    why_not = None
    if not requested:
        why_not = f"turned off ({SWITCH}=native)"
    elif platform.machine() not in ("x86_64", "AMD64"):
        why_not = f"not an x86-64 CPU ({platform.machine()}): the AVX2 kernels do not exist here"
    elif capability != "AVX2":
        why_not = ("the CPU lacks AVX2" if "avx2" not in cpu_flags() else
                   f"torch ran {capability} kernels before advmoe was imported (import advmoe first)")
    elif threads != PIN_THREADS:
        why_not = f"{threads} torch threads, not {PIN_THREADS}"
    elif any(os.environ.get(k) != v for k, v in PIN.items()):
        why_not = "the kernel settings were changed after import: " + ", ".join(
            f"{k}={os.environ.get(k)}" for k in PIN)
    return {"mode": mode(), "pinned": why_not is None, "why_not": why_not, "aten_capability": capability,
            "env": {k: os.environ.get(k) for k in PIN}, "threads": threads, "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(), "machine": platform.machine()}
