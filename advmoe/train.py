"""Methods and the one training loop.

A method is what one iteration does; the loop (epochs, cosine schedule, checkpoint/resume, progress)
is written once:
  standard  cross-entropy on clean data (the paper's "standard training", Fig. 1b);
  at        TRADES on all parameters: AT(Dense), AT(S-Dense), AT(MoE) (Sec. 3, Eq. (AT));
  advmoe    Algorithm 1: a TRADES step of the routers on one batch, then a TRADES step of the
            backbone on a different batch, each against a fresh K-step PGD attack on the model as
            it is at that moment (Sec. 4). Both steps run the whole model in train mode, so the
            BatchNorm statistics move in the router step too, as in the authors' code.
  at-routers   TRADES on the routers only (phi), the backbone (psi) fixed: its weights and its BatchNorm
               statistics (Sec. 4: "fix psi at its standard weights"). Starts from a parent experiment.
  at-backbone  TRADES on the backbone only, the routers fixed (the same way). Starts from a parent.
  hydra-mask      AT (Sparse), stage 1 (HYDRA): TRADES on the channel-mask scores and the BatchNorm affine
                  parameters, conv and linear weights fixed; BatchNorm in train mode, its statistics follow the
                  masked network (HYDRA's default, freeze_bn=False; with the Dense parent's statistics fixed, clean
                  accuracy fell to 12% within the first epoch at the cpu preset). Starts from a Dense parent; scores
                  from its weights.
  hydra-finetune  AT (Sparse), stage 2: TRADES on the weights, the mask fixed: on the compact network (the kept
                  channels, kind s-dense), which computes the same. Starts from a hydra-mask parent.
  pgd-at    PGD adversarial training as Robust Experts does it (Madry et al.): cross-entropy on the last iterate of a
            K-step PGD-CE attack with random start, adversarial examples only. The attack runs in eval mode, as every
            attack in this book (the authors' ran in train mode: batch statistics, and the noisy gate of the switch
            loss); the update in train mode.
  rt-er     the dual-model paper's RT-ER on a network MoE (kind network-moe): CE on the last iterate of PGD-CE against
            the whole MoE, plus beta / B times the sum over the batch of KL(f_i(x) || f_i(x'_i)), f_i the expert the
            router ranks second for the clean image, x'_i PGD-CE against f_i alone (their released loss; B the batch
            size). Every attack runs first, in eval mode; then the update in train mode.
  jtdmoe    the dual-model paper's joint training of a dual model (kind dual-moe), one batch: a robust step of F_R (its
            RT-ER loss with the KL term of every expert on the whole batch, as their released code does), then a clean
            step of F_S on the blend's cross-entropy with F_R fixed, weights and BatchNorm statistics (their code
            left F_S's stale gradient in the next step and F_R's BatchNorm statistics never moved: not copied).
A Robust Experts model (kinds block-moe, conv-moe) adds its balancing loss, times `balancing_coef`, summed over its
MoE layers on the step's training-mode forward (`advmoe.models.balancing_losses`), to standard and pgd-at steps.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import accel
from . import data as datalib
from . import distributed
from .attacks import pgd
from .evaluate import accuracy, robust_accuracy
from .io import atomic_torch_save, load_checkpoint
from .losses import kl_from_logits, trades_loss
from .models import (backbone_parameters, balancing_losses, init_scores_from_weights, mask_stage_parameters,
                     router_parameters)

SYNCED_KINDS = ("dense", "s-dense", "moe", "sparse")  # under torchrun: BatchNorm over the global batch (`distributed`)
METHODS = ("standard", "at", "advmoe", "at-routers", "at-backbone", "hydra-mask", "hydra-finetune", "pgd-at", "rt-er",
           "jtdmoe")
PARTIAL = {"at-routers": router_parameters, "at-backbone": backbone_parameters,  # method -> what it trains
           "hydra-mask": mask_stage_parameters}


@contextlib.contextmanager
def only_training(model: nn.Module, params: list[nn.Parameter], fixed_statistics: bool = False):
    """Train mode with gradients only for `params` (the rest is fixed, and autograd skips its weight grads).

    fixed_statistics: BatchNorm layers none of whose parameters are trained stay in eval mode, so their running
    statistics do not move and they normalise with them (a fixed part is fixed entirely)."""
    chosen = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.train()
    if fixed_statistics:
        for m in model.modules():  # a BatchNorm's own parameters (a masked one also holds its mask's scores)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                    id(p) in chosen for p in m.parameters(recurse=False)):
                m.eval()
    for p, _ in flags:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter a method trains: all of them, except those a model freezes for good (the released dual-model
    router, `models.NetworkMoE(router_trains=False)`)."""
    return [p for p in model.parameters() if p.requires_grad]


def optimizer_for(params: list[nn.Parameter], spec) -> torch.optim.Optimizer:
    """The spec's optimizer over `params`: SGD (AdvMoE's Appendix B: momentum 0.9, weight decay 5e-4, lr 0.1 for
    every method), or Adam (the dual-model code's: lr 1e-4, no weight decay)."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def make_optimizers(model: nn.Module, spec) -> dict[str, torch.optim.Optimizer]:
    """The method's optimizers; under torchrun each averages its gradients over the processes before a step."""
    return {k: distributed.synced(o) for k, o in _optimizers(model, spec).items()}


def _optimizers(model: nn.Module, spec) -> dict[str, torch.optim.Optimizer]:
    if spec.method == "advmoe":  # routers (phi) and backbone (psi) are optimised alternately, same lr/schedule
        return {"router": optimizer_for(router_parameters(model), spec),
                "backbone": optimizer_for(backbone_parameters(model), spec)}
    if spec.method in PARTIAL:
        return {"all": optimizer_for(PARTIAL[spec.method](model), spec)}
    if spec.method == "jtdmoe":  # the dual model's two MoEs, each with its own step
        return {"robust": optimizer_for(trainable(model.robust), spec),
                "standard": optimizer_for(trainable(model.standard), spec)}
    return {"all": optimizer_for(trainable(model), spec)}


def logged(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a step reports: its loss and its accuracy on the batch, as tensors on the model's device. The loop reads
    them once per epoch, so a GPU step never waits for the host (`advmoe.accel`)."""
    return loss.detach(), (logits.detach().argmax(1) == y).float().mean()


def trades_step(model, params, optimizer, x, y, spec, fixed_statistics: bool = False):
    """One TRADES update of `params` (the other parameters fixed) against a fresh PGD-KL attack."""
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, loss="kl")
    with only_training(model, params, fixed_statistics):
        loss, logits = trades_loss(model, x, x_adv, y, spec.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logged(loss, logits, y)


def standard_step(model, params, optimizer, x, y, spec):
    """Cross-entropy on x (clean data, or pgd-at's adversarial examples), plus a Robust Experts model's balancing
    loss; returns (loss, accuracy on x)."""
    with only_training(model, params):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        balancing = balancing_losses(model)  # None for every model without a top-k MoE layer
        if balancing is not None:
            loss = loss + spec.balancing_coef * balancing
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logged(loss, logits, y)


def pgd_at_step(model, params, optimizer, x, y, spec):
    """Madry's PGD-AT: a step on the last iterate of a PGD-CE attack; the accuracy returned is on those examples."""
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, loss="ce", last_iterate=True)
    return standard_step(model, params, optimizer, x_adv, y, spec)


def _expert_attacks(moe, x, y, assign, spec) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(expert, its samples, their PGD examples against that expert alone) for each expert that `assign` gives
    samples to (assign: the expert per sample, or None: every expert on the whole batch)."""
    out = []
    for e, expert in enumerate(moe.experts):
        rows = torch.arange(len(x), device=x.device) if assign is None else (assign == e).nonzero().squeeze(1)
        if rows.numel():
            xe, ye = x.index_select(0, rows), y.index_select(0, rows)
            out.append((expert, xe, pgd(expert, xe, ye, spec.train_eps, spec.train_step_size, spec.train_steps,
                                        last_iterate=True)))
    return out


def robust_moe_loss(moe, x, x_adv, y, experts, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """CE(F(x_adv), y) + beta / B * sum over `experts`' samples of KL(f_i(x) || f_i(x'_i)) (RT-ER's loss); returns
    (loss, logits on x_adv). Runs in the caller's mode (train)."""
    logits = moe(x_adv)
    kl = sum(kl_from_logits(expert(xe), expert(xe_adv), reduction="sum") for expert, xe, xe_adv in experts)
    return F.cross_entropy(logits, y) + spec.beta / len(x) * kl, logits


def rt_er_step(model, params, optimizer, x, y, spec):
    """RT-ER: the whole MoE against PGD, and each sample's second-ranked expert against PGD on that expert alone."""
    with torch.no_grad():
        second = model.router(x).topk(2, dim=1).indices[:, 1]  # the router's ranking of the clean image
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, last_iterate=True)
    experts = _expert_attacks(model, x, y, second, spec)
    with only_training(model, params):
        loss, logits = robust_moe_loss(model, x, x_adv, y, experts, spec)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logged(loss, logits, y)


def jtdmoe_step(model, optimizers, x, y, spec):
    """JTDMoE, one batch: F_R's robust step (every expert's KL term), then F_S's clean step on the blend."""
    robust = model.robust
    x_adv = pgd(robust, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, last_iterate=True)
    experts = _expert_attacks(robust, x, y, None, spec)
    with only_training(model, list(robust.parameters()), fixed_statistics=True):  # F_S is not run here
        loss, _ = robust_moe_loss(robust, x, x_adv, y, experts, spec)
        optimizers["robust"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["robust"].step()
    with only_training(model, list(model.standard.parameters()), fixed_statistics=True):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizers["standard"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["standard"].step()
    return logged(loss, logits, y)


def iteration(model, optimizers, batch, other_batch, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """What one iteration of `spec.method` does; returns (loss, accuracy) of the backbone/all step (`logged`)."""
    x, y = batch
    if spec.method == "standard":
        return standard_step(model, trainable(model), optimizers["all"], x, y, spec)
    if spec.method == "pgd-at":
        return pgd_at_step(model, trainable(model), optimizers["all"], x, y, spec)
    if spec.method == "rt-er":
        return rt_er_step(model, trainable(model), optimizers["all"], x, y, spec)
    if spec.method == "jtdmoe":
        return jtdmoe_step(model, optimizers, x, y, spec)
    if spec.method in ("at", "hydra-finetune"):
        return trades_step(model, trainable(model), optimizers["all"], x, y, spec)
    if spec.method in PARTIAL:
        return trades_step(model, PARTIAL[spec.method](model), optimizers["all"], x, y, spec, fixed_statistics=True)
    # Algorithm 1, line 4: lower level, routers phi on batch B_phi with the backbone psi fixed.
    trades_step(model, router_parameters(model), optimizers["router"], *other_batch, spec)
    # Algorithm 1, line 5: upper level, backbone psi on batch B_psi with the routers phi fixed.
    return trades_step(model, backbone_parameters(model), optimizers["backbone"], x, y, spec)


def start_from(model: nn.Module, parent_state: dict, spec) -> None:
    """Load a chained experiment's starting weights. hydra-mask starts a Sparse model from a Dense parent: every
    weight loads, the mask scores (which the parent lacks) start from those weights (HYDRA's scaled init)."""
    if spec.method != "hydra-mask":
        model.load_state_dict(parent_state)
        return
    result = model.load_state_dict(parent_state, strict=False)
    if result.unexpected_keys or any(not k.endswith("mask.scores") for k in result.missing_keys):
        raise ValueError(f"the parent's weights do not fit a Sparse model: unexpected {result.unexpected_keys}, "
                         f"missing {[k for k in result.missing_keys if not k.endswith('mask.scores')]}")
    init_scores_from_weights(model)


def cosine(total_iterations: int):
    return lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total_iterations) / total_iterations))


def poly(epochs: int, iterations_per_epoch: int, power: float = 0.9):
    """Robust Experts' PolyLR: lr x (1 - epoch / epochs)^0.9, constant within an epoch (their code steps it per
    epoch; its warm-up quirk, epoch 0 at 1% of the lr, is not copied)."""
    return lambda it: (1 - min(it // iterations_per_epoch, epochs) / epochs) ** power


def cyclic(step_size_up: int = 500):
    """The dual-model code's CyclicLR(base_lr = lr / 2, max_lr = lr, step_size_up=500, "triangular"), stepped per
    iteration: it starts at lr / 2 (the paper's text says "starting at 1e-4": facts file C2)."""
    return lambda it: 0.5 + 0.5 * (1 - abs(it / step_size_up % 2 - 1))


def schedule(spec, iterations_per_epoch: int):
    """The learning-rate factor per iteration of a spec's schedule."""
    if spec.schedule == "cyclic":
        return cyclic()
    if spec.schedule == "poly":
        return poly(spec.epochs, iterations_per_epoch)
    return cosine(spec.epochs * iterations_per_epoch)


def trajectory_settings(preset: str) -> tuple[int, int]:
    """(test images, PGD steps) of the robust accuracy tracked after every epoch (Fig. A2). cpu: PGD-10 on 200
    images, about a tenth of an epoch's training time."""
    return {"smoke": (16, 2), "cpu": (200, 10), "gpu": (1000, 10), "paper": (1000, 10)}[preset]


def train(spec, model: nn.Module, train_data: datalib.ImageData, test_data: datalib.ImageData, workdir: Path,
          device: torch.device, progress: bool = True, position: int = 0,
          track: tuple[int, int] | None = None) -> list[dict]:
    """Train `model` by `spec.method`, checkpointing atomically after every epoch; resume if a checkpoint exists.

    Returns the per-epoch history: training loss and accuracy, test SA on the whole test set and, with
    track=(n, steps), RA against PGD-`steps` (CE, eval eps and step size) on a fixed, class-balanced subset of n
    test images. The tracking attack draws its random start from a generator of its own and runs in eval mode, so
    it changes neither the training randomness nor the BatchNorm statistics: the weights are those of an
    untracked run (tested).
    """
    n_iter = len(train_data) // spec.batch_size
    optimizers = make_optimizers(model, spec)
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, schedule(spec, n_iter)) for k, o in optimizers.items()}
    generator = torch.Generator().manual_seed(spec.seed)
    history: list[dict] = []
    start = 0
    ckpt_path = Path(workdir) / "checkpoint.pt"
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, spec)
        if state is not None:
            model.load_state_dict(state["model"])
            for k in optimizers:
                optimizers[k].load_state_dict(state["optimizers"][k])
                schedulers[k].load_state_dict(state["schedulers"][k])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            history, start = state["history"], state["epoch"]

    distributed.check_batch(spec.batch_size)
    sync_norm = spec.kind in SYNCED_KINDS

    def batch(idx: torch.Tensor):  # under torchrun: the global batch drawn and augmented as in one process, then a shard
        x = datalib.augment(train_data.images[idx], generator, crop=train_data.crop)
        x, y = distributed.shard(x), distributed.shard(train_data.labels[idx])
        return datalib.to_float(x, device), y.to(device)

    tracked = test_data.subset(min(track[0], len(test_data)), 0) if track else None
    with accel.compiled(model, device):  # the steps and the per-epoch evaluation (advmoe.accel)
        for epoch in range(start, spec.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(len(train_data), generator=generator)
            batches = perm[: n_iter * spec.batch_size].view(n_iter, spec.batch_size)
            losses, accs = [], []
            bar = tqdm(range(n_iter), desc=f"{spec.name} epoch {epoch + 1}/{spec.epochs}", disable=not progress,
                       leave=False, dynamic_ncols=True, position=position)
            for i in bar:
                # AdvMoE draws a different batch for the routers: the one half an epoch away, so each example
                # serves once as a router and once as a backbone example per epoch (Appendix B).
                other = batch(batches[(i + n_iter // 2) % n_iter]) if spec.method == "advmoe" else None
                with distributed.sharded(sync_norm), accel.autocast(device):
                    loss, acc = iteration(model, optimizers, batch(batches[i]), other, spec)
                for s in schedulers.values():
                    s.step()
                losses.append(loss)
                accs.append(acc)
                if device.type == "cpu":  # free there; on a GPU the bar shows the rate only (no host read per step)
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.2f}")
            losses, accs = torch.stack(losses).tolist(), torch.stack(accs).tolist()  # one host read per epoch
            loss, acc = distributed.mean(sum(losses) / len(losses)), distributed.mean(sum(accs) / len(accs))
            if not distributed.is_main():  # under torchrun rank 0 evaluates and writes the checkpoint; the others wait
                distributed.barrier()
                continue
            history.append({
                "epoch": epoch + 1,
                "lr": next(iter(optimizers.values())).param_groups[0]["lr"],
                "train_loss": loss,
                "train_accuracy": acc,
                "test_sa": accuracy(model, test_data, device, progress=False),
                **({"test_ra_tracked": robust_accuracy(model, tracked, device, spec.eval_eps, spec.eval_step_size,
                                                       track[1], seed=epoch, progress=False),
                    "tracked": {"n": len(tracked), "steps": track[1]}} if track else {}),
                "seconds": time.perf_counter() - t0,
            })
            atomic_torch_save({
                "spec_hash": spec.hash, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            }, ckpt_path)
            distributed.barrier()
    return history
