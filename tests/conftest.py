import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import advmoe  # noqa: F401  (first: it pins the CPU kernels before torch runs one; see advmoe.numerics)
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def class_images(n: int, num_classes: int, seed: int):
    """Images whose mean colour depends on the class (so a model can learn them), and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    base = (labels[:, None] * 255 // max(1, num_classes - 1)).astype(np.int64)
    noise = rng.integers(-40, 41, size=(n, 3 * 32 * 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 40) -> Path:
    """A tiny dataset in the official pickle layout (python-2 style latin1 pickles, as distributed)."""
    num_classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    x, y = class_images(n_train, num_classes, 0)
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    for f, xs, ys in zip(files, np.array_split(x, len(files)), np.array_split(y, len(files))):
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": xs, key: ys.tolist()}, fh, protocol=2)
    x, y = class_images(n_test, num_classes, 1)
    with open(folder / ("test_batch" if name == "cifar10" else "test"), "wb") as fh:
        pickle.dump({"data": x, key: y.tolist()}, fh, protocol=2)
    return folder


def write_tiny_imagenet(root: Path, wnids: list[str], n_train: int = 3, n_val: int = 2, gray: int = 1) -> Path:
    """A small Tiny-ImageNet in the official layout: wnids.txt (unsorted), train/<wnid>/images/<wnid>_<i>.JPEG and
    <wnid>_boxes.txt, val/images/val_<k>.JPEG labelled in val/val_annotations.txt (shuffled); the first `gray`
    images of each class are grayscale (PIL mode L), as 3% of the release. Pixel values encode (class, index)."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rows, k = [], 0
    for c, w in enumerate(sorted(wnids)):
        (folder / "train" / w / "images").mkdir(parents=True, exist_ok=True)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(n_train):
            value = 10 * c + i
            im = Image.new("L" if i < gray else "RGB", (64, 64), value if i < gray else (value, value, value))
            im.save(folder / "train" / w / "images" / f"{w}_{i}.JPEG", quality=100)
        for i in range(n_val):
            Image.new("RGB", (64, 64), (200 - c, 0, i)).save(folder / "val" / "images" / f"val_{k}.JPEG", quality=100)
            rows.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
            k += 1
    np.random.default_rng(0).shuffle(rows)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """ADVMOE_DATA and ADVMOE_RESULTS pointed at a temporary tree holding a tiny official-format CIFAR-10."""
    data = tmp_path / "data"
    write_cifar(data, "cifar10", n_train=256, n_test=64)
    monkeypatch.setenv("ADVMOE_DATA", str(data))
    monkeypatch.setenv("ADVMOE_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """ADVMOE_RESULTS pointed at a fresh directory for one test module that trains smoke-preset models on the CIFAR-10
    JPEG copy (skipped where it is not unpacked; CI always has it)."""
    from advmoe import data as datalib

    if not (datalib.data_dir() / "cifar10-jpeg").is_dir() and os.environ.get("CI") != "true":
        pytest.skip("the CIFAR-10 JPEG copy is not unpacked (advmoe fetch cifar10-jpeg); CI always has it")
    old = os.environ.get("ADVMOE_RESULTS")
    os.environ["ADVMOE_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    yield
    if old is None:
        del os.environ["ADVMOE_RESULTS"]
    else:
        os.environ["ADVMOE_RESULTS"] = old
