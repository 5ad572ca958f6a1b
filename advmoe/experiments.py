"""Experiments as frozen specs, presets as functions returning specs, and a result store with provenance.

results/<preset>/<name>-<hash>/metrics.json holds the spec, the final and per-epoch metrics, the
routing histograms and where/how the numbers were made; checkpoint.pt sits beside it (git-ignored).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as datalib
from . import accel, distributed, numerics
from .attacks import check_attack
from .evaluate import evaluate
from .io import atomic_write_json, file_sha256, read_json, state_sha256
from .models import KINDS, NETWORK_KINDS, TOPK_KINDS, check_alpha, check_model_args, compact, create_model
from .train import METHODS, PARTIAL, start_from, train, trajectory_settings

PRESETS = ("smoke", "cpu", "gpu", "paper")
BOOK_PRESETS = ("smoke", "cpu", "paper")  # what a page is executed at (the gpu preset shows on the cpu Table 1/2 pages)
TABLE1 = (  # (label, kind, method, scale): the paper's Table 1 rows for one (dataset, backbone) cell (`row_spec`)
    ("AT (Dense)", "dense", "at", 1.0),
    ("AT (S-Dense)", "s-dense", "at", 0.5),
    ("AT (Sparse)", "s-dense", "hydra-finetune", 0.5),  # HYDRA's chain over AT (Dense): `hydra_chain`
    ("AT (MoE)", "moe", "at", 0.5),
    ("AdvMoE", "moe", "advmoe", 0.5),
)
# Fields added after results were stored, left out of the hash at these values.
HASH_DEFAULTS = dict(placement="layer4", gate="gap-fc", top_k=1, balancing="entropy", balancing_coef=0.5,
                     schedule="cosine", alpha=0.7, router_trains=True, optimizer="sgd")
SCHEDULES = ("cosine", "poly", "cyclic")
OPTIMIZERS = ("sgd", "adam")
TOPK_METHODS = ("standard", "pgd-at")  # what trains a Robust Experts model
NETWORK_METHODS = {"network-moe": ("standard", "pgd-at", "rt-er"), "dual-moe": ("jtdmoe",)}  # the dual-model paper's
SUBSET_SEED = 0  # train/test subsets are the same for every seed and method: only training randomness varies
# What a chained experiment shares with its parent (the architecture and the data it was trained on).
CHAIN_FIELDS = ("preset", "dataset", "backbone", "kind", "scale", "n_experts", "router", "base_width", "train_subset",
                "test_subset")


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines a result. Defaults are the paper's protocol (see `preset_settings('paper')`)."""
    preset: str
    kind: str
    method: str
    scale: float = 1.0
    dataset: str = "cifar10"
    backbone: str = "resnet18"
    n_experts: int = 2
    router: str = "per-layer"
    base_width: int = 64
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    beta: float = 6.0
    train_eps: float = 8 / 255
    train_step_size: float = 5 / 255
    train_steps: int = 2
    eval_eps: float = 8 / 255
    eval_step_size: float = 2 / 255
    eval_steps: int = 50
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    parent: "ExperimentSpec | None" = None  # training starts from this experiment's trained weights (a chain)
    # Robust Experts' models (kinds block-moe, conv-moe: `advmoe.models.topk`): where the MoE sits, its gate, k, the
    # balancing loss and its weight (0.5 in all the authors' ResNet-18 runs); and the learning-rate schedule. Added
    # after results were stored: at these values they stay out of the hash (`HASH_DEFAULTS`), so every earlier spec
    # keeps its hash and its stored result. Never change these defaults.
    placement: str = "layer4"
    gate: str = "gap-fc"
    top_k: int = 1
    balancing: str = "entropy"
    balancing_coef: float = 0.5
    schedule: str = "cosine"  # or "poly": lr x (1 - epoch / epochs)^0.9, per epoch (the Robust Experts code); or
    # "cyclic": triangular between lr / 2 and lr, 500 iterations up, 500 down (the dual-model code's CyclicLR)
    # The dual-model paper's (kinds network-moe, dual-moe: `advmoe.models.netmoe`): the blend's weight of the robust
    # MoE, and whether the image router trains (False: the released design, frozen at its initialisation). RT-ER's
    # and JTDMoE's KL weight is `beta` (6, as TRADES').
    alpha: float = 0.7
    router_trains: bool = True
    optimizer: str = "sgd"  # or "adam" (the dual-model code's; lr, weight_decay as given, momentum unused)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        datalib.check_dataset(self.dataset)
        check_model_args(self.backbone, self.kind, self.scale, self.n_experts, self.router,
                         base_width=self.base_width, kinds=KINDS + TOPK_KINDS + NETWORK_KINDS, stem=self.stem)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.kind in TOPK_KINDS:
            if self.method not in TOPK_METHODS:
                raise ValueError(f"kind {self.kind!r} is trained by {' or '.join(TOPK_METHODS)}, not {self.method!r}")
            if not isinstance(self.balancing_coef, (int, float)) or self.balancing_coef < 0:
                raise ValueError(f"balancing_coef must be a number >= 0, got {self.balancing_coef!r}")
            create_model(self.backbone, self.kind, self.scale, self.n_experts, 10, self.router, 1, self.placement,
                         self.gate, self.top_k, self.balancing)  # gate, k, loss and placement, checked on a tiny model
        if self.kind in NETWORK_KINDS or self.method in ("rt-er", "jtdmoe"):
            allowed = NETWORK_METHODS.get(self.kind, ())
            if self.method not in allowed:
                trains = {m: k for k, ms in NETWORK_METHODS.items() for m in ms if m in ("rt-er", "jtdmoe")}
                raise ValueError(f"method {self.method!r} trains kind {trains[self.method]!r}, not {self.kind!r}"
                                 if self.method in trains else
                                 f"kind {self.kind!r} is trained by {' or '.join(allowed)}, not {self.method!r}")
            if not isinstance(self.n_experts, int) or self.n_experts < 2:
                raise ValueError(f"kind {self.kind!r} needs n_experts >= 2, got {self.n_experts!r}")
            check_alpha(self.alpha)
            if not isinstance(self.router_trains, bool):
                raise ValueError(f"router_trains must be True or False, got {self.router_trains!r}")
        if self.method == "advmoe" and self.kind != "moe":
            raise ValueError(f"method 'advmoe' trains routers and experts of kind 'moe', not {self.kind!r}")
        if self.kind == "moe" and self.n_experts < 2 and self.method == "advmoe":
            raise ValueError("method 'advmoe' needs n_experts >= 2 (one expert leaves nothing to route)")
        for name in ("epochs", "batch_size", "seed", "train_steps", "eval_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {value!r}")
        for name in ("lr", "beta"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        check_attack(self.train_eps, self.train_step_size, self.train_steps)
        check_attack(self.eval_eps, self.eval_step_size, self.eval_steps)
        minimum = self.batch_size * (2 if self.method == "advmoe" else 1)
        if self.train_subset is not None and (not isinstance(self.train_subset, int) or self.train_subset < minimum):
            raise ValueError(f"train_subset must be None (all) or an integer >= {minimum} "
                             f"({'two batches' if self.method == 'advmoe' else 'one batch'}), got {self.train_subset!r}")
        if self.test_subset is not None and (not isinstance(self.test_subset, int) or self.test_subset < 1):
            raise ValueError(f"test_subset must be None (all) or an integer >= 1, got {self.test_subset!r}")
        needs = "sparse" if self.method == "hydra-mask" else "moe"
        if self.method in PARTIAL and self.kind != needs:
            raise ValueError(f"method {self.method!r} trains part of a {needs} model (kind {needs!r}), not kind "
                             f"{self.kind!r}")
        if self.kind == "sparse" and self.method != "hydra-mask":
            raise ValueError(f"kind 'sparse' is trained by HYDRA: method 'hydra-mask' (its fine-tuning, "
                             f"'hydra-finetune', trains the compact network, kind 's-dense'), not {self.method!r}")
        if self.method == "hydra-finetune" and self.kind != "s-dense":
            raise ValueError(f"method 'hydra-finetune' trains the compact network of a 'hydra-mask' parent, kind "
                             f"'s-dense', not {self.kind!r}")
        if (self.method in PARTIAL or self.method == "hydra-finetune") and self.parent is None:
            raise ValueError(f"method {self.method!r} starts from a trained model: give parent=<the spec it starts from>")
        if self.parent is not None:
            if not isinstance(self.parent, ExperimentSpec):
                raise ValueError(f"parent must be an ExperimentSpec or None, got {type(self.parent).__name__}")
            shared = CHAIN_FIELDS
            if self.method == "hydra-mask":  # a Sparse model learns its mask over a Dense parent's weights
                if self.parent.kind != "dense":
                    raise ValueError(f"method 'hydra-mask' starts from a Dense model (kind 'dense'), not "
                                     f"{self.parent.name}")
                shared = tuple(f for f in CHAIN_FIELDS if f not in ("kind", "scale"))
            if self.method == "hydra-finetune":  # the mask's kept weights, as the compact network (S-Dense)
                if self.parent.method != "hydra-mask":
                    raise ValueError(f"method 'hydra-finetune' starts from a 'hydra-mask' experiment, not "
                                     f"{self.parent.name}")
                shared = tuple(f for f in CHAIN_FIELDS if f != "kind")
            differ = [f for f in shared if getattr(self.parent, f) != getattr(self, f)]
            if differ:
                raise ValueError(f"parent {self.parent.name} differs in {', '.join(differ)}; a chained experiment "
                                 f"starts from its parent's weights and data, so {', '.join(shared)} must match")

    @property
    def name(self) -> str:
        router = "-shared" if self.kind == "moe" and self.router == "shared" else ""
        experts = f"-n{self.n_experts}" if self.kind == "moe" else ""
        if self.kind in TOPK_KINDS:
            experts = f"-n{self.n_experts}-{self.placement}-{self.gate}-k{self.top_k}-{self.balancing}"
        if self.kind in NETWORK_KINDS:
            experts = (f"-n{self.n_experts}" + ("" if self.router_trains else "-frozen-router")
                       + (f"-a{self.alpha:g}" if self.kind == "dual-moe" else ""))
        chain = f"-from-{self.parent.method}" if self.parent is not None else ""
        return (f"{self.dataset}-{self.backbone}-{self.kind}{experts}{router}-r{self.scale:g}-{self.method}{chain}"
                f"-s{self.seed}")

    @property
    def hash(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "parent"
                  and not (f.name in HASH_DEFAULTS and getattr(self, f.name) == HASH_DEFAULTS[f.name])}
        if self.parent is not None:  # a spec without a parent keeps the hash it had before chains existed
            fields["parent"] = self.parent.hash
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    @property
    def stem(self) -> str:
        """ImageNet's models have the 7x7 stride-2 stem (paper Appendix B); every other dataset the 3x3 one."""
        return "imagenet" if self.dataset == "imagenet" else "cifar"

    @property
    def num_classes(self) -> int:
        return datalib.DATASETS[self.dataset][0]

    def replace(self, **changes) -> "ExperimentSpec":
        return dataclasses.replace(self, **changes)

    def with_seed(self, seed: int) -> "ExperimentSpec":
        """The same experiment, chain included, trained with another seed."""
        return self.replace(seed=seed, parent=None if self.parent is None else self.parent.with_seed(seed))


def model_for(spec: ExperimentSpec):
    """The untrained model a spec describes (initialised from the global RNG: seed it first)."""
    return create_model(spec.backbone, spec.kind, spec.scale, spec.n_experts, spec.num_classes, spec.router,
                        spec.base_width, spec.placement, spec.gate, spec.top_k, spec.balancing,
                        image_size=datalib.IMAGE_SIZE[spec.dataset], router_trains=spec.router_trains,
                        alpha=spec.alpha, stem=spec.stem)


def preset_settings(preset: str) -> dict:
    """The fields a preset sets; everything else keeps the paper's value (ExperimentSpec defaults)."""
    if preset == "smoke":  # seconds on a CPU: tests and CI
        return dict(dataset="cifar10-jpeg", base_width=8, epochs=2, batch_size=32, train_subset=128, test_subset=32,
                    eval_steps=5)
    if preset == "cpu":  # this 2-core machine: the Table-1 slice trains and evaluates in <= 30 min.
        # Reduced from the paper: base width 16 (not 64), 5k training images (not 50k), 8 epochs (not 100),
        # RA by PGD-20 (not 50) on a fixed, balanced 1k-image test subset (not 10k). Measured one at a time
        # on 2 cores: train + eval 407+86 s AT(Dense), 220+44 AT(S-Dense), 376+75 AT(MoE), 642+59 AdvMoE,
        # 32 min in all; `advmoe run --jobs 2` (two one-thread workers) is what fits it in 30 min.
        return dict(dataset="cifar10-jpeg", base_width=16, epochs=8, batch_size=128, train_subset=5_000,
                    test_subset=1_000, eval_steps=20)
    if preset == "gpu":  # the paper's regime with a compressed schedule, sized for one GPU window (advmoe.gpupreset)
        from . import gpupreset
        return gpupreset.settings()
    if preset == "paper":
        return dict(
            dataset="cifar10",       # Table 1 (CIFAR-10 cell; the paper also runs CIFAR-100, Tiny-ImageNet, ImageNet)
            base_width=64,           # ResNet-18 of [71] (Appendix B)
            epochs=100,              # Appendix B: "we train all the methods for 100 epochs"
            batch_size=128,          # Appendix B: batch 128 (512 on ImageNet)
            lr=0.1,                  # Appendix B: initial lr 0.1, cosine decay
            momentum=0.9,            # Appendix B: SGD, momentum 0.9
            weight_decay=5e-4,       # Appendix B: weight decay 5e-4
            beta=6.0,                # TRADES [25] default; authors' code beta = 6
            train_eps=8 / 255,       # Sec. 5.1: eps = 8/255 on CIFAR-10/100
            train_step_size=5 / 255,  # authors' code: train PGD step 5/255 (not stated in the paper)
            train_steps=2,           # Sec. 5.1: 2-step PGD at training time for all methods
            eval_eps=8 / 255,        # Sec. 5.1: test attack strength same as training
            eval_step_size=2 / 255,  # authors' code: test PGD step 2/255 with random start
            eval_steps=50,           # Sec. 5.1: RA against 50-step PGD
            train_subset=None,       # full training set
            test_subset=None,        # full test set
        )
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")


def preset_seeds(preset: str) -> tuple[int, ...]:
    """paper: Table 1's mean +- std over 3 independent trials. cpu: 3 seeds too (the design is on the "How to read a
    verdict" page: fewer than 3 leave Student's t too wide to decide anything). smoke: 2 seeds, so that the tests
    and CI run every multi-seed path (mean +- std, Student's t, paired gaps) in seconds."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if preset == "gpu":  # 4: see advmoe.gpupreset
        from . import gpupreset
        return gpupreset.SEEDS
    return {"paper": (0, 1, 2), "cpu": (0, 1, 2), "smoke": (0, 1)}[preset]


def make_spec(preset: str, kind: str, method: str, scale: float = 1.0, **overrides) -> ExperimentSpec:
    return ExperimentSpec(preset=preset, kind=kind, method=method, scale=scale,
                          **{**preset_settings(preset), **overrides})


def train_attack(steps: int, eps: float = 8 / 255) -> dict:
    """The training attack with `steps` steps: the step size keeps steps x step = 1.25 eps, the paper preset's
    total for 2 steps of 5/255 at eps 8/255 (so 10 steps take 1/255 each; Table A1)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return dict(train_steps=steps, train_step_size=1.25 * eps / steps)


def hydra_chain(preset: str, scale: float, dense_method: str = "at", finetune: bool = True,
                **overrides) -> ExperimentSpec:
    """AT (Sparse) as HYDRA trains it: a Dense model (`dense_method`), its mask learned with TRADES (weights fixed),
    then its weights fine-tuned with TRADES (mask fixed). finetune=False stops after the mask (Fig. 3's M3 over a
    standard-trained Dense).

    Fine-tuning with the mask fixed trains the kept weights only, so it trains the compact network (`compact`: the
    kept channels, an S-Dense network): the same function and gradients as the masked full-width one (a removed
    channel is exactly zero, and BatchNorm normalises each channel on its own), at S-Dense's cost."""
    dense = make_spec(preset, "dense", dense_method, 1.0, **overrides)
    mask = make_spec(preset, "sparse", "hydra-mask", scale, parent=dense, **overrides)
    return make_spec(preset, "s-dense", "hydra-finetune", scale, parent=mask, **overrides) if finetune else mask


def row_spec(preset: str, kind: str, method: str, scale: float = 1.0, **overrides) -> ExperimentSpec:
    """The experiment of a table row (kind, method, scale): AT (Sparse)'s fine-tuning is the end of HYDRA's chain over
    AT (Dense) (`hydra_chain`); every other row is one training from scratch."""
    if method == "hydra-finetune":
        return hydra_chain(preset, scale, **overrides)
    return make_spec(preset, kind, method, scale, **overrides)


def table1(preset: str, seeds: tuple[int, ...] | None = None, **overrides) -> list[ExperimentSpec]:
    """The Table-1 slice (ResNet-18 on CIFAR-10 by default): AT (Dense), AT (S-Dense), AT (Sparse), AT (MoE),
    AdvMoE."""
    return [row_spec(preset, **{"kind": kind, "method": method, "scale": scale, "seed": seed, **overrides})
            for seed in (seeds if seeds is not None else preset_seeds(preset))
            for _, kind, method, scale in TABLE1]


def results_root() -> Path:
    return Path(os.environ.get("ADVMOE_RESULTS", datalib.REPO / "results"))


def result_dir(spec: ExperimentSpec, root: Path | None = None) -> Path:
    return Path(root or results_root()) / spec.preset / f"{spec.name}-{spec.hash}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is visible; allowed here: cpu, auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, auto")
    return torch.device(device)


CODE = ("advmoe", "benchmarks", "pyproject.toml")  # what computes results: the package, its scripts, its configuration


def provenance(device: torch.device) -> dict:
    """Where and how a result is computed: code (git commit, and whether `CODE` has uncommitted changes; executed
    pages, the book's text and results/ are not code), versions, device, CPU and kernels."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=datalib.REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    import numpy
    import PIL
    import torchvision

    import advmoe
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE)),
        "versions": {"advmoe": advmoe.__version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else numerics.cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numerics": numerics.state(),
        "accel": accel.for_device(device).record(),  # how the model ran there (advmoe.accel)
        "platform": platform.platform(),
    }


ALLOW_DIRTY = "ADVMOE_ALLOW_DIRTY"


def _inside_repo(root: Path | None) -> bool:
    try:
        Path(root or results_root()).resolve().relative_to(datalib.REPO.resolve())
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def computing(device: str, root: Path | None = None):
    """Around every computation whose result is stored: yields (device, provenance).

    On the CPU it runs under the pinned thread count (advmoe.numerics; restored afterwards). Results are
    not stored into the repository's results/ from a working tree with uncommitted changes to the code that
    computes them (`CODE`; an executed notebook does not count), unless ADVMOE_ALLOW_DIRTY=1 (the CLI's
    --allow-dirty) asks for it; provenance records git_dirty.
    """
    numerics.check()
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        numerics.use_pinned_threads()
    try:
        started = provenance(dev)
        if started["git_dirty"] and _inside_repo(root) and os.environ.get(ALLOW_DIRTY) != "1":
            raise ValueError(f"the code ({', '.join(CODE)}) has uncommitted changes, and results/ must be computed from "
                             f"a commit: commit first, or pass --allow-dirty ({ALLOW_DIRTY}=1) to store them marked dirty")
        yield dev, started
    finally:
        torch.set_num_threads(threads)


def run(spec: ExperimentSpec, device: str = "cpu", root: Path | None = None, progress: bool = True,
        position: int = 0) -> dict:
    """Train (resuming from a checkpoint if one exists), evaluate, and store metrics.json atomically."""
    out = result_dir(spec, root)
    parent = None
    if spec.parent is not None:  # the parent first (trained now if it has no finished checkpoint)
        parent = trained_model(spec.parent, device, root, progress)
        parent = (compact(parent) if spec.method == "hydra-finetune" else parent).state_dict()
    train_data = datalib.load(spec.dataset, "train", subset=spec.train_subset, seed=SUBSET_SEED)
    test_data = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=SUBSET_SEED)
    with computing(device, root) as (dev, started):  # provenance: the code as it was when this call began
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        torch.manual_seed(spec.seed)
        model = accel.prepare(model_for(spec), dev)
        if parent is not None:
            start_from(model, parent, spec)
        for pattern in (*EVALUATIONS, ".*.tmp") if distributed.is_main() else ():  # evaluations of an earlier
            for stale in out.glob(pattern):                                          # model; temp files of a killed
                stale.unlink()                                                        # write
        history = train(spec, model, train_data, test_data, out, dev, progress, position,
                        track=trajectory_settings(spec.preset))
        if not distributed.is_main():  # under torchrun rank 0 evaluates and writes (`advmoe.distributed`)
            return {}
        t1 = time.perf_counter()
        final = evaluate(model, test_data, spec, dev, progress)
        t2 = time.perf_counter()
    metrics = {
        "spec": dataclasses.asdict(spec), "hash": spec.hash, "name": spec.name,
        "final": final, "history": history,
        **({"parent": {"name": spec.parent.name, "hash": spec.parent.hash,
                       "model_sha256": load(spec.parent, root)["model_sha256"]}} if spec.parent is not None else {}),
        "data": {"train": train_data.source, "n_train": len(train_data), "n_test": len(test_data),
                 # the decoded uint8 images and labels: a re-run tells at once whether its data decoded identically
                 "train_sha256": train_data.fingerprint(), "test_sha256": test_data.fingerprint()},
        "checkpoint_sha256": file_sha256(out / "checkpoint.pt"),  # the file (detects damage)
        "model_sha256": state_sha256(model.state_dict()),  # the trained weights (what `advmoe verify` compares)
        "provenance": {**started, **({"processes": distributed.world()[1]} if distributed.world()[1] > 1 else {}),
                       "train_seconds_this_call": t1 - t0, "eval_seconds": t2 - t1,
                       "train_seconds_total": sum(h["seconds"] for h in history),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    return atomic_write_json(metrics, out / "metrics.json")


EVALUATIONS = ("eps-sweep-*.json", "autoattack-*.json", "audit-*.json", "worst-case-*.json", "dissection-*.json",
               "mask-channels.json", "robust-experts-*.json", "dual-model-*.json")  # stored beside metrics.json


def read_evaluation(path: Path, spec: ExperimentSpec, root: Path | None = None) -> dict | None:
    """A stored evaluation of a model, or None when missing, damaged or made on other weights than the ones
    metrics.json records (a model re-trained since into another one: it is recomputed, never shown beside the new
    one). Same weights means the same model_sha256 (a re-training with pinned numerics writes another checkpoint
    file, as the file holds timings, but the same weights); evaluations stored before model_sha256 was recorded
    compare the checkpoint file."""
    stored = read_json(path)
    if stored is None:
        return None
    metrics = read_json(result_dir(spec, root) / "metrics.json")
    key = "model_sha256" if stored.get("model_sha256") else "checkpoint_sha256"
    if metrics is None or stored.get(key) != metrics.get(key):
        warnings.warn(f"{path.name} of {spec.name} was computed on another checkpoint (other weights) than "
                      f"metrics.json records; it will be recomputed")
        return None
    return stored


def load(spec: ExperimentSpec, root: Path | None = None) -> dict:
    """The stored metrics; FileNotFoundError if missing or damaged (a damaged file also warns)."""
    path = result_dir(spec, root) / "metrics.json"
    metrics = read_json(path)
    if metrics is None:
        raise FileNotFoundError(f"no stored result for {spec.name} ({spec.hash}) in {path.parent}; "
                                f"compute it with: advmoe run --preset {spec.preset}")
    if metrics.get("hash") != spec.hash:
        raise ValueError(f"{path} holds spec {metrics.get('hash')}, not {spec.hash}; delete it and re-run")
    return metrics


def load_model(spec: ExperimentSpec, root: Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """The trained model from the result's checkpoint (train it first with `get`/`run` if needed)."""
    from .io import load_checkpoint

    path = result_dir(spec, root) / "checkpoint.pt"
    metrics = read_json(path.parent / "metrics.json")
    if path.is_file() and metrics and metrics.get("checkpoint_sha256") not in (None, file_sha256(path)):
        warnings.warn(f"checkpoint {path} does not match the sha256 in metrics.json (damaged or replaced); "
                      f"removed, the model will be retrained")
        path.unlink()
        state = None
    else:
        state = load_checkpoint(path, spec) if path.is_file() else None
    if state is None or state["epoch"] < spec.epochs:
        raise FileNotFoundError(f"no finished checkpoint for {spec.name} in {path.parent}; "
                                f"train it with: advmoe run --preset {spec.preset}")
    model = model_for(spec)
    model.load_state_dict(state["model"])
    return accel.prepare(model, resolve_device(device)).eval()


def trained_model(spec: ExperimentSpec, device: str = "cpu", root: Path | None = None,
                  progress: bool = True) -> torch.nn.Module:
    """The model from its finished checkpoint, training it first if there is none (or it is damaged).

    Training is deterministic for a spec, so a model re-trained this way reproduces the stored metrics. A finished
    checkpoint without metrics.json (a run stopped while evaluating) is evaluated now: every model returned here has
    its metrics stored.
    """
    try:
        load(spec, root)
        return load_model(spec, root, device)
    except FileNotFoundError:
        run(spec, device, root, progress)
        return load_model(spec, root, device)


def evaluation(spec: ExperimentSpec, name: str, compute, device: str = "cpu", root: Path | None = None,
               recompute: bool = False, progress: bool = True) -> dict:
    """The stored evaluation `name` (a JSON file beside metrics.json) of a trained model, computed if missing.

    compute(model, device) returns the evaluation's fields. The model is trained first if it has no
    checkpoint; the result records the sha256 of the checkpoint it was computed on, and a stored result whose
    checkpoint and weights; a stored result computed on other weights than metrics.json records is recomputed
    (`read_evaluation`).
    """
    path = result_dir(spec, root) / name
    stored = None if recompute else read_evaluation(path, spec, root)
    if stored is not None:
        return stored
    model = trained_model(spec, device, root, progress)
    weights = state_sha256(model.state_dict())
    with computing(device, root) as (dev, started):
        t0 = time.perf_counter()
        fields = compute(accel.prepare(model, dev), dev)
        started["seconds"] = time.perf_counter() - t0
    return atomic_write_json({"spec": dataclasses.asdict(spec), "hash": spec.hash, **fields,
                              "checkpoint_sha256": load(spec, root)["checkpoint_sha256"], "model_sha256": weights,
                              "provenance": started}, path)


def eps_sweep(spec: ExperimentSpec, eps_grid: list[float], steps: int | None = None, device: str = "cpu",
              root: Path | None = None, recompute: bool = False, progress: bool = True) -> dict:
    """RA of a trained model against PGD-CE at each eps (Fig. 2), stored as eps-sweep-<grid and steps>.json."""
    from .evaluate import robust_accuracy

    steps = spec.eval_steps if steps is None else steps
    for e in eps_grid:
        check_attack(e, spec.eval_step_size, steps)
    key = hashlib.sha256(json.dumps([list(map(float, eps_grid)), steps]).encode()).hexdigest()[:8]

    def compute(model, dev):
        test_data = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=SUBSET_SEED)
        ra = [robust_accuracy(model, test_data, dev, e, spec.eval_step_size, steps, progress=progress)
              for e in eps_grid]
        return {"eps": [float(e) for e in eps_grid], "steps": steps, "step_size": spec.eval_step_size, "ra": ra,
                "n_test": len(test_data)}

    return evaluation(spec, f"eps-sweep-{key}.json", compute, device, root, recompute, progress)


def dissection(spec: ExperimentSpec, steps: int | None = None, device: str = "cpu", root: Path | None = None,
               recompute: bool = False, progress: bool = True) -> dict:
    """Fig. 4/5's dissection of a trained MoE model (`advmoe.dissect`) under PGD-CE at the spec's eval eps, on its
    test set, stored as dissection-<steps>.json beside its metrics."""
    from .dissect import dissect

    if spec.kind != "moe":
        raise ValueError(f"the dissection compares MoE routing; {spec.name} is kind {spec.kind!r}, not 'moe'")
    steps = spec.eval_steps if steps is None else steps
    check_attack(spec.eval_eps, spec.eval_step_size, steps)

    def compute(model, dev):
        test_data = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=SUBSET_SEED)
        return dissect(model, test_data, dev, spec.eval_eps, spec.eval_step_size, steps, progress=progress)

    return evaluation(spec, f"dissection-pgd{steps}.json", compute, device, root, recompute, progress)


def mask_channels(spec: ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
                  progress: bool = True) -> dict:
    """The channels a trained Sparse model's masks keep, per conv (in the full-width layer's index space), stored as
    mask-channels.json beside its metrics: Fig. 6 compares MoE pathways with them without the checkpoint."""
    from .models.sparse import MaskedBatchNorm2d

    if spec.kind != "sparse":
        raise ValueError(f"mask_channels reads a Sparse model's masks; {spec.name} is kind {spec.kind!r}, not 'sparse'")

    def compute(model, dev):
        kept, widths, previous = {}, {}, None
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                previous = name
            elif isinstance(m, MaskedBatchNorm2d):  # the mask on the output of the conv just before it
                kept[previous], widths[previous] = m.mask.kept().tolist(), m.num_features
        return {"kept": kept, "full_widths": widths}

    return evaluation(spec, "mask-channels.json", compute, device, root, recompute, progress)


def autoattack_settings(preset: str) -> tuple[str, int | None]:
    """(AutoAttack version, number of test examples) for a preset."""
    return {"smoke": ("apgd-ce", 8),          # seconds: APGD-CE alone on a handful of images
            # cpu: measured (benchmarks/autoattack_cost.py, AT(Dense), 100 images, 2 threads): 304 s, of which
            # APGD-CE 11 s, then per image still robust APGD-T 2.2 s, FAB-T 5.3 s, Square 5.4 s. The cost
            # follows the number of robust images, so n=200 is ~10 min for AT(Dense), less for the rest.
            "cpu": ("standard", 200),
            "gpu": ("standard", 1000),        # a fixed, balanced 1,000 of the 10,000 (advmoe.gpupreset)
            "paper": ("standard", None),      # Table 2: standard AutoAttack on the full test set
            }[preset]


def autoattack_eval(spec: ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
                    progress: bool = True, position: int = 0) -> dict:
    """RA-AA (Table 2) of a trained model, and RA-PGD on the same examples, stored beside its metrics.json.

    The examples are a fixed, class-balanced subset of the experiment's test set (all of it for `paper`).
    """
    from .attacks import autoattack
    from .evaluate import robust_accuracy
    from .io import bits

    version, n = autoattack_settings(spec.preset)

    def compute(model, dev):
        test = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=SUBSET_SEED).subset(n, SUBSET_SEED)
        x, y = datalib.to_float(test.images, dev), test.labels.to(dev)
        aa = autoattack(model, x, y, spec.eval_eps, version=version, seed=spec.seed)
        pgd_correct = []
        ra_pgd = robust_accuracy(model, test, dev, spec.eval_eps, spec.eval_step_size, spec.eval_steps,
                                 progress=progress, per_example=pgd_correct)
        return {**aa, "ra_pgd_same_examples": ra_pgd, "pgd_steps": spec.eval_steps, "correct_pgd": bits(pgd_correct)}

    return evaluation(spec, _autoattack_file(spec), compute, device, root, recompute, progress)


def _autoattack_file(spec: ExperimentSpec) -> str:
    version, n = autoattack_settings(spec.preset)
    return f"autoattack-{version}-n{n or 'all'}.json"


def stored_autoattack(spec: ExperimentSpec, root: Path | None = None) -> dict | None:
    """The stored AutoAttack result of a model (`autoattack_eval`), or None; never computes."""
    return read_evaluation(result_dir(spec, root) / _autoattack_file(spec), spec, root)


def get(spec: ExperimentSpec, device: str = "cpu", root: Path | None = None, recompute: bool = False,
        progress: bool = True, position: int = 0) -> dict:
    """The stored result if there is one (and recompute is False), else run it (recompute: from scratch)."""
    if recompute:
        for f in ("checkpoint.pt", "metrics.json"):
            (result_dir(spec, root) / f).unlink(missing_ok=True)
    else:
        try:
            return load(spec, root)
        except FileNotFoundError:
            pass
    return run(spec, device, root, progress, position)


def relative_cost(spec: ExperimentSpec) -> float:
    """A rough training cost, to start the longest experiments first (measured: AdvMoE ~2x AT(MoE) ~1.4x AT(S-Dense);
    PGD-7 AT of a dense, BlockMoE or ConvMoE ResNet-18 about the same, k = 2 ~1.2x)."""
    per_step = {"standard": 0.3, "at": 1.0, "advmoe": 2.0, "at-routers": 0.8, "at-backbone": 1.0, "hydra-mask": 0.8,
                "hydra-finetune": 1.0, "pgd-at": 2.5, "rt-er": 5.0, "jtdmoe": 12.0}[spec.method]  # the last two: guesses
    kind = {"dense": 1.0, "s-dense": 0.5, "moe": 0.8, "sparse": 1.0, "block-moe": 1.0, "conv-moe": 1.0,
            "network-moe": 1.0, "dual-moe": 1.0}[spec.kind]
    topk = 1 + 0.2 * (spec.top_k - 1) if spec.kind in TOPK_KINDS else 1
    return per_step * kind * topk * spec.epochs * (spec.train_subset or 50_000)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: finally blocks remove temporary files


def _worker_init(threads: int) -> None:
    import signal

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)


def _task_in_worker(args) -> dict:
    task, *rest = args
    return task(*rest)


def get_many(specs: list[ExperimentSpec], device: str = "cpu", root: Path | None = None, recompute: bool = False,
             progress: bool = True, jobs: int = 1, on_done=None, task=None) -> list[dict]:
    """`get` (or another task with get's arguments, such as `audit.audit`) for several specs; with jobs > 1,
    in that many single-process workers sharing the CPU cores; under `cluster.executor("ray")`, as Ray tasks.

    On a 2-core CPU, two one-thread workers train about 25% more images per second than one two-thread
    process (small convolutions parallelise poorly). The thread count is part of the provenance: results
    are deterministic for a given (spec, threads). Longest experiments start first.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    from . import cluster

    if cluster.active() is not None:  # --executor ray: every unit a Ray task (the device is the workers')
        return cluster.run_units(specs, task or get, device, root, recompute, progress, on_done)
    resolve_device(device)
    parents = {s.parent.hash: s.parent for s in specs if s.parent is not None}
    if parents:  # chains: parents first, each once (two workers never train a shared parent at the same time)
        get_many(list(parents.values()), device, root, progress=progress, jobs=jobs)
    task = task or get
    if jobs == 1 or len(specs) == 1:
        results = []
        for spec in specs:
            results.append(task(spec, device, root, recompute, progress))
            if on_done:
                on_done(spec, results[-1])
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    order = sorted(range(len(specs)), key=lambda i: -relative_cost(specs[i]))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: list[dict | None] = [None] * len(specs)
    pool = cf.ProcessPoolExecutor(jobs, mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,))
    try:
        futures = {pool.submit(_task_in_worker, (task, specs[i], device, root, recompute, progress, k % jobs)): i
                   for k, i in enumerate(order)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(specs[i], results[i])
    except BaseException:  # interrupted or failed: stop the other workers too (each keeps its last checkpoint)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results
