"""Datasets held whole in memory as uint8 tensors, with augmentation applied to batches.

Sources: the official CIFAR-10 / CIFAR-100 files through torchvision (downloaded only by
`advmoe fetch`), and any ImageFolder tree `<root>/<split>/<class>/<image>`; `cifar10-jpeg` is the
JPEG copy of CIFAR-10 in ../shared/data (labels exact, pixels approximate: results computed on it
say so in their provenance).
"""
from __future__ import annotations

import hashlib
import os
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # name -> (number of classes, where it lives under the data directory, how to get it)
    "cifar10": (10, "cifar-10-batches-py", "advmoe fetch cifar10   (needs internet)"),
    "cifar100": (100, "cifar-100-python", "advmoe fetch cifar100   (needs internet)"),
    "cifar10-jpeg": (10, "cifar10-jpeg", "advmoe fetch cifar10-jpeg   (unpacks ../shared/data/cifar10-jpeg.tar.gz)"),
}
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class DataMissingError(FileNotFoundError):
    """Raised with one line naming the directory and the command that gets the data."""


def data_dir() -> Path:
    """$ADVMOE_DATA, else data/ at the repository root."""
    return Path(os.environ.get("ADVMOE_DATA", REPO / "data"))


def shared_dir() -> Path:
    return Path(os.environ.get("ADVMOE_SHARED", REPO.parent / "shared"))


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of the decoded uint8 images and the labels: equal only if the data decoded bit for bit alike."""
        h = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().astype("<i8").tobytes())
        return h.hexdigest()

    def subset(self, n: int | None, seed: int) -> "ImageData":
        if n is None or n >= len(self):
            return self
        idx = balanced_indices(self.labels, self.num_classes, n, seed)
        return ImageData(self.images[idx], self.labels[idx], self.num_classes, self.source)


def balanced_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """Seeded, class-balanced choice of n indices (n // K per class, the remainder to the first classes), sorted."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n // num_classes + (c < n % num_classes)]])
    return torch.cat(chosen).sort().values


def load(name: str, split: str, root: Path | None = None, subset: int | None = None, seed: int = 0) -> ImageData:
    """A split of a dataset (all of it, or a balanced `subset`), or DataMissingError naming the fetch command."""
    check_dataset(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    root = Path(root or data_dir())
    num_classes, sub, how = DATASETS[name]
    where = root / sub
    if not where.is_dir():
        raise DataMissingError(f"{name} not found in {where}; get it with: {how}")
    if name == "cifar10-jpeg":
        return load_image_folder(where / split, f"{name} (JPEG copy of CIFAR-10, pixels approximate)", subset, seed)
    return load_cifar(name, root, split == "train").subset(subset, seed)


CIFAR_FILES = {  # the official pickles: (training files, test files, label key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": (["train"], ["test"], "fine_labels"),
}


def load_cifar(name: str, root: Path, train: bool) -> ImageData:
    """Read the official CIFAR-10/100 python pickles (the files torchvision downloads) into uint8 tensors."""
    import pickle

    folder = Path(root) / DATASETS[name][1]
    train_files, test_files, key = CIFAR_FILES[name]
    images, labels = [], []
    for f in train_files if train else test_files:
        try:
            with open(folder / f, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch[key])
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise DataMissingError(f"{folder / f} is missing or corrupt ({type(e).__name__}); "
                                   f"get the official files with: {DATASETS[name][2]}") from None
    return ImageData(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long),
                     DATASETS[name][0], f"{name} (official files)")


def load_image_folder(root: Path, source: str | None = None, subset: int | None = None, seed: int = 0) -> ImageData:
    """<root>/<class>/<image>; classes sorted by name give the labels (as torchvision's ImageFolder).

    A `subset` is chosen from the labels before decoding, so small presets decode only what they use.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataMissingError(f"image folder {root} not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for c, cls in enumerate(classes):
        names = sorted(f for f in os.listdir(root / cls) if f.lower().endswith(IMAGE_EXTENSIONS))
        files += [root / cls / f for f in names]
        labels += [c] * len(names)
    if not files:
        raise DataMissingError(f"no images found under {root}/<class>/")
    labels = torch.tensor(labels)
    if subset is not None and subset < len(files):
        idx = balanced_indices(labels, len(classes), subset, seed)
        files, labels = [files[i] for i in idx], labels[idx]
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {root} differ in size ({sorted(shapes)[:3]}...); resize them first")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, labels, len(classes), source or f"image folder {root.name}")


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 batch, on whole tensors."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def to_float(x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 -> float in [0, 1] (attacks work in this box; no normalisation layer, as in the paper's code)."""
    return x.to(device, non_blocking=True).float().div_(255)


def fetch(name: str, root: Path | None = None) -> Path:
    """Put a dataset under the data directory: unpack the shared JPEG copy, or download the official files."""
    check_dataset(name)
    root = Path(root or data_dir())
    root.mkdir(parents=True, exist_ok=True)
    if name == "cifar10-jpeg":
        tar = shared_dir() / "data" / "cifar10-jpeg.tar.gz"
        if not tar.is_file():
            raise DataMissingError(f"{tar} not found; set ADVMOE_SHARED to the folder holding data/cifar10-jpeg.tar.gz")
        with tarfile.open(tar) as t:
            t.extractall(root, filter="data")
        return root / "cifar10-jpeg"
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # offline machines fail fast instead of hanging
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:
        raise DataMissingError(f"could not download {name} into {root} ({type(e).__name__}: {e}); "
                               f"copy the official archive there by hand or use cifar10-jpeg") from None
    finally:
        socket.setdefaulttimeout(old)
    return root / DATASETS[name][1]
