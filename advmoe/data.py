"""Datasets held whole in memory as uint8 tensors (ImageNet: decoded batch by batch), with augmentation applied to
batches.

Sources: the official CIFAR-10 / CIFAR-100 files through torchvision (downloaded only by
`advmoe fetch`), and any ImageFolder tree `<root>/<split>/<class>/<image>`; `cifar10-jpeg` is the
JPEG copy of CIFAR-10 in ../shared/data (labels exact, pixels approximate: results computed on it
say so in their provenance). Tiny-ImageNet in the official release's layout (its labelled val split is the test
split, as in the papers; ../shared/data holds 250 of its 500 training images per class, which provenance records),
and ImageNet (ILSVRC-2012) in the official ImageFolder layout, never downloaded.
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
    "tiny-imagenet": (200, "tiny-imagenet-200", "advmoe fetch tiny-imagenet   (unpacks "
                      "../shared/data/tiny-imagenet-200-subset.tar.gz, else downloads the official archive)"),
    "imagenet": (1000, "imagenet", "put ILSVRC-2012's train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the validation "
                 "images sorted into class folders) there; it is never downloaded"),
}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "cifar10-jpeg": 32, "tiny-imagenet": 64, "imagenet": 224}
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGENET_RESIZE = 256  # the authors' ImageNet pipeline: images resized to 256 x 256, then 224 crops
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


class ImageFiles:
    """Images decoded when indexed, for datasets too large to hold (ImageNet): `files[idx]` is a uint8 batch like a
    tensor's, each image resized to `resize` x `resize` and, with `crop`, its centre crop x crop (the test split)."""

    def __init__(self, files: list[Path], resize: int, crop: int | None = None):
        self.files, self.resize, self.crop = list(files), resize, crop

    @property
    def shape(self) -> tuple[int, ...]:
        side = self.crop or self.resize
        return (len(self.files), 3, side, side)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        chosen = ([self.files[idx]] if isinstance(idx, int) else self.files[idx] if isinstance(idx, slice)
                  else [self.files[int(i)] for i in idx])
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL
            arrays = list(pool.map(self._decode, chosen))
        out = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return out[0] if isinstance(idx, int) else out

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.resize, self.resize), Image.BILINEAR)
        a = np.asarray(im)
        if self.crop:
            top = (self.resize - self.crop) // 2
            a = a[top:top + self.crop, top:top + self.crop]
        return a

    def select(self, idx: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.files[int(i)] for i in idx], self.resize, self.crop)


@dataclass
class ImageData:
    images: torch.Tensor | ImageFiles  # uint8 (N, 3, H, W), or decoded when indexed
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    source: str
    crop: int | None = None  # training crops of this size, without padding (ImageNet); None: padded crops, same size

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of the decoded uint8 images and the labels: equal only if the data decoded bit for bit alike. For
        images decoded when used (ImageNet), of their file names and sizes instead."""
        if isinstance(self.images, ImageFiles):
            h = hashlib.sha256("\n".join(f"{f.parent.name}/{f.name} {f.stat().st_size}"
                                         for f in self.images.files).encode())
        else:
            h = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().astype("<i8").tobytes())
        return h.hexdigest()

    def subset(self, n: int | None, seed: int) -> "ImageData":
        if n is None or n >= len(self):
            return self
        idx = balanced_indices(self.labels, self.num_classes, n, seed)
        images = self.images.select(idx) if isinstance(self.images, ImageFiles) else self.images[idx]
        return ImageData(images, self.labels[idx], self.num_classes, self.source, self.crop)


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
    if name == "tiny-imagenet":
        return load_tiny_imagenet(where, split, subset, seed)
    if name == "imagenet":
        return load_imagenet(where, split, subset, seed)
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


def _class_files(root: Path, classes: list[str], inner: str = "") -> tuple[list[Path], list[int]]:
    """The images of <root>/<class>/<inner>, class by class in the given order (the label), sorted by name."""
    files, labels = [], []
    for c, cls in enumerate(classes):
        folder = root / cls / inner
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)) if folder.is_dir() else []
        files += [folder / f for f in names]
        labels += [c] * len(names)
    return files, labels


def _choose(files: list[Path], labels: list[int], num_classes: int, subset: int | None, seed: int):
    labels = torch.tensor(labels)
    if subset is not None and subset < len(files):
        idx = balanced_indices(labels, num_classes, subset, seed)
        files, labels = [files[i] for i in idx], labels[idx]
    return files, labels


def load_image_folder(root: Path, source: str | None = None, subset: int | None = None, seed: int = 0) -> ImageData:
    """<root>/<class>/<image>; classes sorted by name give the labels (as torchvision's ImageFolder).

    A `subset` is chosen from the labels before decoding, so small presets decode only what they use.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataMissingError(f"image folder {root} not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = _class_files(root, classes)
    if not files:
        raise DataMissingError(f"no images found under {root}/<class>/")
    files, labels = _choose(files, labels, len(classes), subset, seed)
    return ImageData(_decode_all(files, root), labels, len(classes), source or f"image folder {root.name}")


def load_tiny_imagenet(root: Path, split: str, subset: int | None = None, seed: int = 0) -> ImageData:
    """Tiny-ImageNet in the official layout: train/<wnid>/images/*.JPEG, and the labelled val split (val/images,
    labels in val/val_annotations.txt) as the test split. Labels: the wnids of wnids.txt, sorted (torchvision's
    ImageFolder order on train/). Grayscale images become RGB. The source names how many of the official 500
    training images per class were found (../shared/data's copy has 250)."""
    root = Path(root)
    try:
        classes = sorted((root / "wnids.txt").read_text().split())
    except OSError:
        raise DataMissingError(f"{root / 'wnids.txt'} not found: not the official Tiny-ImageNet layout; get it with: "
                               f"{DATASETS['tiny-imagenet'][2]}") from None
    if len(classes) != 200:
        raise DataMissingError(f"{root / 'wnids.txt'} lists {len(classes)} classes, not Tiny-ImageNet's 200")
    if split == "train":
        files, labels = _class_files(root / "train", classes, "images")
        per_class = torch.tensor(labels).bincount(minlength=len(classes)) if labels else torch.zeros(1)
        source = (f"tiny-imagenet ({int(per_class.min())}"
                  f"{'' if per_class.min() == per_class.max() else f'-{int(per_class.max())}'} of the official 500 "
                  "training images per class)")
    else:
        index = {c: i for i, c in enumerate(classes)}
        try:
            rows = [line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines()
                    if line.strip()]
        except OSError:
            raise DataMissingError(f"{root / 'val' / 'val_annotations.txt'} not found; get Tiny-ImageNet with: "
                                   f"{DATASETS['tiny-imagenet'][2]}") from None
        unknown = sorted({w for _, w in rows if w not in index})
        if unknown:
            raise ValueError(f"val_annotations.txt names classes missing from wnids.txt: {', '.join(unknown[:3])}")
        rows.sort()
        files, labels = [root / "val" / "images" / f for f, _ in rows], [index[w] for _, w in rows]
        source = "tiny-imagenet (the labelled val split, 50 images per class, as the test split)"
    if not files:
        raise DataMissingError(f"no Tiny-ImageNet {split} images under {root}; get them with: "
                               f"{DATASETS['tiny-imagenet'][2]}")
    files, labels = _choose(files, labels, len(classes), subset, seed)
    return ImageData(_decode_all(files, root), labels, len(classes), source)


def load_imagenet(root: Path, split: str, subset: int | None = None, seed: int = 0) -> ImageData:
    """ILSVRC-2012 in the official ImageFolder layout (train/<wnid>/, val/<wnid>/; classes sorted by wnid), decoded
    batch by batch: each image resized to 256 x 256 (the authors' pipeline), then random 224 crops and flips for
    training, the centre 224 crop for testing."""
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataMissingError(f"imagenet {split} split not found in {folder}; {DATASETS['imagenet'][2]}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files, labels = _class_files(folder, classes)
    if len(classes) != 1000 or not files:
        raise DataMissingError(f"{folder} holds {len(classes)} class folders and {len(files)} images, not ImageNet's "
                               f"1000 classes; {DATASETS['imagenet'][2]}")
    files, labels = _choose(files, labels, len(classes), subset, seed)
    train = split == "train"
    return ImageData(ImageFiles(files, IMAGENET_RESIZE, None if train else IMAGE_SIZE["imagenet"]), labels,
                     len(classes), f"imagenet ({split})", crop=IMAGE_SIZE["imagenet"] if train else None)


def _decode_all(files: list[Path], root: Path) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {root} differ in size ({sorted(shapes)[:3]}...); resize them first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, crop: int | None = None) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 batch, on whole tensors; with `crop`, random
    crop x crop windows of the unpadded images instead (ImageNet's 224 of 256)."""
    b, c, h, w = x.shape
    if crop is None:  # windows of the input's size in the zero-padded input
        x, h_out, w_out = F.pad(x, (pad, pad, pad, pad)), h, w
    else:  # smaller windows of the input itself
        h_out = w_out = crop
    dy = torch.randint(0, x.shape[2] - h_out + 1, (b,), generator=generator)
    dx = torch.randint(0, x.shape[3] - w_out + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h_out))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w_out))[:, None, None, :]
    out = x[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def to_float(x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 -> float in [0, 1] (attacks work in this box; no normalisation layer, as in the paper's code)."""
    if isinstance(x, ImageFiles):
        x = x[:]
    return x.to(device, non_blocking=True).float().div_(255)


def fetch(name: str, root: Path | None = None) -> Path:
    """Put a dataset under the data directory: unpack the shared JPEG copy, or download the official files."""
    check_dataset(name)
    root = Path(root or data_dir())
    root.mkdir(parents=True, exist_ok=True)
    if name == "imagenet":
        raise DataMissingError(f"imagenet is never downloaded: {DATASETS[name][2].replace('there', f'in {root}/imagenet')}")
    shared = {"cifar10-jpeg": "cifar10-jpeg.tar.gz", "tiny-imagenet": "tiny-imagenet-200-subset.tar.gz"}
    tar = shared_dir() / "data" / shared.get(name, "")
    if name in shared and tar.is_file():
        with tarfile.open(tar) as t:
            t.extractall(root, filter="data")
        return root / DATASETS[name][1]
    if name == "cifar10-jpeg":
        raise DataMissingError(f"{tar} not found; set ADVMOE_SHARED to the folder holding data/cifar10-jpeg.tar.gz")
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # offline machines fail fast instead of hanging
    try:
        if name == "tiny-imagenet":
            download_and_extract_archive(TINY_URL, str(root), md5="90528d7ca1a48142e341f4ef8d21d0de")
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            for train in (True, False):
                cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:
        hint = f"or set ADVMOE_SHARED to the folder holding data/{shared[name]}" if name in shared else "or use cifar10-jpeg"
        raise DataMissingError(f"could not download {name} into {root} ({type(e).__name__}: {e}); "
                               f"copy the official archive there by hand {hint}") from None
    finally:
        socket.setdefaulttimeout(old)
    return root / DATASETS[name][1]
