import numpy as np
import pytest
import torch
from PIL import Image

from advmoe import data as datalib
from advmoe.cli import main as cli
from conftest import class_images, write_cifar


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loader_reads_official_pickles(tmp_path, name, classes):
    write_cifar(tmp_path, name, n_train=200, n_test=50)
    train, test = datalib.load(name, "train", tmp_path), datalib.load(name, "test", tmp_path)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (50, 3, 32, 32) and train.num_classes == classes
    x, y = class_images(200, classes, 0)
    assert torch.equal(train.images, torch.from_numpy(x).view(-1, 3, 32, 32))
    assert train.labels.tolist() == y.tolist()


def test_image_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for c, cls in enumerate(["bird", "airplane", "cat"]):  # labels follow sorted class names
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
            expected[(cls, i)] = arr
    d = datalib.load_image_folder(tmp_path / "train")
    assert d.images.shape == (12, 3, 32, 32) and d.num_classes == 3
    assert d.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # airplane, bird, cat
    assert np.array_equal(d.images[4].permute(1, 2, 0).numpy(), expected[("bird", 0)])
    sub = datalib.load_image_folder(tmp_path / "train", subset=6, seed=0)
    assert sub.labels.bincount().tolist() == [2, 2, 2]


def test_subset_is_balanced_and_seeded(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=500, n_test=20)
    d = datalib.load("cifar10", "train", tmp_path)
    a, b, c = d.subset(103, 0), d.subset(103, 0), d.subset(103, 1)
    assert len(a) == 103 and a.labels.bincount().tolist() == [11, 11, 11] + [10] * 7
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert d.subset(None, 0) is d


def test_augment_crops_and_flips_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    x = x.repeat(64, 1, 1, 1)
    out = datalib.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    changed = (out != x).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # most samples moved
    # every output is a shifted and possibly flipped crop of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        found = any(torch.equal(out[i], view)
                    for dy in range(9) for dx in range(9)
                    for view in (padded[i, :, dy:dy + 32, dx:dx + 32], padded[i, :, dy:dy + 32, dx:dx + 32].flip(2)))
        assert found


def test_missing_data_names_folder_and_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVMOE_DATA", str(tmp_path))
    with pytest.raises(datalib.DataMissingError) as e:
        datalib.load("cifar10-jpeg", "train")
    assert str(tmp_path / "cifar10-jpeg") in str(e.value) and "advmoe fetch cifar10-jpeg" in str(e.value)
    with pytest.raises(datalib.DataMissingError, match="advmoe fetch cifar100"):
        datalib.load("cifar100", "test")
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100, cifar10-jpeg"):
        datalib.load("imagenet", "train")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"truncated")
    with pytest.raises(datalib.DataMissingError, match="corrupt"):
        datalib.load("cifar10", "test")


def test_fetch_unpacks_shared_copy_or_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVMOE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ADVMOE_SHARED", str(tmp_path / "nowhere"))
    assert cli(["fetch", "cifar10-jpeg"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ADVMOE_SHARED" in err
