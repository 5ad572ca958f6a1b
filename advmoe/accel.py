"""How a model runs on its device: what a GPU needs to be fast, and what of it provenance records.

On a CIFAR-sized model a GPU is bound by kernel launches and host waits, not arithmetic (issue 22: at batch 128 an
H100 trained Dense, 4x S-Dense's FLOPs, as fast as S-Dense; a TRADES step of the MoE dispatched ~2,480 kernels). The
settings:

- execution: the MoE layers' "static" execution (every expert on every sample, masked: fixed shapes, no host reads;
  `models.set_execution`) or "sparse" (each sample its expert only: the CPU's, where it saves the FLOPs);
- compile: None, or a `torch.compile` mode for the model's forward: "default", or "reduce-overhead" (CUDA graphs of
  each compiled graph: the launch overhead goes). Forward and backward trace whole with the static execution
  (tested on the CPU with fullgraph=True);
- channels_last: convolution weights (and so activations) in NHWC, the layout of cuDNN's fastest kernels;
- bf16: bfloat16 autocast of the training step (forward passes of the update and of the training attack). Every
  evaluation stays float32, so no reported robust accuracy rests on a weakened attack.

Settings come from the device (`for_device`: a GPU gets static execution, nothing else changes by default) and the
environment variable ADVMOE_ACCEL (e.g. "compile=reduce-overhead,channels_last,bf16"), which worker processes
inherit (`--jobs K --device cuda`). The CPU keeps the sparse execution and none of the rest: its arithmetic, and so
every stored cpu result, is unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn

from .models import EXECUTIONS, set_execution

ENV = "ADVMOE_ACCEL"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Accel:
    execution: str = "sparse"
    compile: str | None = None
    channels_last: bool = False
    bf16: bool = False

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {self.execution!r}; allowed: {', '.join(EXECUTIONS)}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; allowed: {', '.join(COMPILE_MODES)}")

    def record(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """The settings as ADVMOE_ACCEL writes them ("" for the defaults)."""
        parts = [f"execution={self.execution}"] if self.execution != "sparse" else []
        parts += [f"compile={self.compile}"] if self.compile else []
        parts += [name for name in ("channels_last", "bf16") if getattr(self, name)]
        return ",".join(parts)


def parse(text: str, device: torch.device) -> Accel:
    """ADVMOE_ACCEL's text on top of the device's defaults: comma-separated execution=..., compile=...,
    channels_last, bf16. Anything else: ValueError naming what is allowed."""
    fields = dataclasses.asdict(Accel(execution="static" if device.type == "cuda" else "sparse"))
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key in ("channels_last", "bf16") and not value:
            fields[key] = True
        elif key in ("execution", "compile") and value:
            fields[key] = value
        else:
            raise ValueError(f"{ENV}: unknown setting {item!r}; allowed: execution=sparse|static, "
                             f"compile={'|'.join(COMPILE_MODES)}, channels_last, bf16 (comma-separated)")
    accel = Accel(**fields)
    if device.type != "cuda" and (accel.compile or accel.channels_last or accel.bf16):
        raise ValueError(f"{ENV}={text!r} is for a GPU; on the CPU only execution= applies (the CPU's arithmetic is "
                         f"pinned: advmoe.numerics)")
    return accel


def for_device(device: torch.device | str) -> Accel:
    """The settings a model runs with on `device` (ADVMOE_ACCEL over the device's defaults)."""
    return parse(os.environ.get(ENV, ""), torch.device(device))


@contextlib.contextmanager
def use(accel: Accel):
    """Run with these settings (and let worker processes inherit them): for benchmarks and tests."""
    old = os.environ.get(ENV)
    os.environ[ENV] = accel.text()
    try:
        yield accel
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def prepare(model: nn.Module, device: torch.device | str, accel: Accel | None = None) -> nn.Module:
    """`model` on `device` in `accel`'s memory format and MoE execution (default: `for_device`). The same module,
    so its state_dict keys and checkpoints do not change with the settings."""
    device = torch.device(device)
    accel = accel or for_device(device)
    model = model.to(device, memory_format=torch.channels_last) if accel.channels_last else model.to(device)
    return set_execution(model, accel.execution)


@contextlib.contextmanager
def compiled(model: nn.Module, device: torch.device | str, accel: Accel | None = None):
    """Within the block, calls of `model` run its `torch.compile`d forward when `accel.compile` says so (training:
    the steps and the per-epoch evaluation); the stored evaluations after it run eagerly, so their many routing
    modes (forced, fixed, soft) never wait for compilation. The module and its parameters stay the same."""
    accel = accel or for_device(torch.device(device))
    if not accel.compile:
        yield model
        return
    previous = model._compiled_call_impl  # what nn.Module.compile sets; restored after the block
    model.compile(mode=accel.compile)
    try:
        yield model
    finally:
        model._compiled_call_impl = previous


def autocast(device: torch.device | str, accel: Accel | None = None):
    """The training step's autocast: bfloat16 when `accel.bf16`, else nothing."""
    device = torch.device(device)
    accel = accel or for_device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if accel.bf16 else contextlib.nullcontext()
