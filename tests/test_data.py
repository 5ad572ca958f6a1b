import numpy as np
import pytest
import torch
from PIL import Image

from advmoe import data as datalib
from advmoe.cli import main as cli
from conftest import class_images, write_cifar, write_tiny_imagenet

WNIDS = [f"n{i:08d}" for i in (7, 3, 5, 1)] + [f"n9{i:07d}" for i in range(196)]  # 200 ids, wnids.txt not sorted


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
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100, cifar10-jpeg, tiny-imagenet, imagenet"):
        datalib.load("imagenet-21k", "train")
    with pytest.raises(datalib.DataMissingError, match="never downloaded"):
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


def test_tiny_imagenet_loader_reads_the_official_layout(tmp_path):
    write_tiny_imagenet(tmp_path, WNIDS, n_train=2, n_val=2)
    train = datalib.load("tiny-imagenet", "train", tmp_path)
    test = datalib.load("tiny-imagenet", "test", tmp_path)
    assert train.images.shape == (400, 3, 64, 64) and test.images.shape == (400, 3, 64, 64)
    assert train.num_classes == test.num_classes == 200
    assert train.labels.bincount().tolist() == [2] * 200 == test.labels.bincount().tolist()
    # labels: sorted wnids; training image i of class c was written with value 10 c + i, a grayscale one as RGB
    for idx in (0, 1, 2, 3, 7):
        c, i = int(train.labels[idx]), idx % 2
        assert (train.images[idx].float() - (10 * c + i) % 256).abs().max() <= 2
    # val labels come from val_annotations.txt (shuffled there): val image of class c has red 200 - c
    assert all(abs(int(test.images[j, 0, 0, 0]) - (200 - int(test.labels[j]))) <= 2 for j in range(0, 400, 37))
    assert "2 of the official 500 training images per class" in train.source
    assert "val split" in test.source
    sub = datalib.load("tiny-imagenet", "train", tmp_path, subset=200, seed=0)
    assert sub.labels.bincount().tolist() == [1] * 200


def test_tiny_imagenet_missing_or_malformed_fails_in_one_line(tmp_path):
    with pytest.raises(datalib.DataMissingError, match="advmoe fetch tiny-imagenet"):
        datalib.load("tiny-imagenet", "train", tmp_path)
    folder = write_tiny_imagenet(tmp_path, WNIDS[:5], n_train=1, n_val=1)
    with pytest.raises(datalib.DataMissingError, match="lists 5 classes"):
        datalib.load("tiny-imagenet", "train", tmp_path)
    (folder / "wnids.txt").write_text("\n".join(WNIDS[1:] + ["n12345678"]))  # val names WNIDS[0], now unknown
    with pytest.raises(ValueError, match="missing from wnids.txt: n00000007"):
        datalib.load("tiny-imagenet", "test", tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(datalib.DataMissingError, match="val_annotations.txt not found"):
        datalib.load("tiny-imagenet", "test", tmp_path)


def test_fetch_tiny_imagenet_unpacks_the_shared_copy(tmp_path, monkeypatch):
    import tarfile

    src = write_tiny_imagenet(tmp_path / "src", WNIDS, n_train=1, n_val=1)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    with tarfile.open(tmp_path / "shared" / "data" / "tiny-imagenet-200-subset.tar.gz", "w:gz") as t:
        t.add(src, arcname="tiny-imagenet-200")
    monkeypatch.setenv("ADVMOE_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("ADVMOE_DATA", str(tmp_path / "data"))
    assert cli(["fetch", "tiny-imagenet"]) == 0
    assert len(datalib.load("tiny-imagenet", "test")) == 200


def _write_imagenet(root, n_classes=1000, per_class=1, sizes=((300, 200), (180, 260))):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(n_classes):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[(c + i) % len(sizes)]
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"n{c:08d}_{i}.JPEG")


def test_imagenet_loader_decodes_batches_at_the_papers_sizes(tmp_path):
    _write_imagenet(tmp_path)
    train = datalib.load("imagenet", "train", tmp_path)
    test = datalib.load("imagenet", "test", tmp_path, subset=10, seed=0)
    assert len(train) == 1000 and train.num_classes == 1000 and train.labels[:3].tolist() == [0, 1, 2]
    assert train.images.shape == (1000, 3, 256, 256) and train.crop == 224  # resized 256 x 256, 224 crops
    batch = train.images[torch.tensor([5, 2])]
    assert batch.shape == (2, 3, 256, 256) and batch.dtype == torch.uint8
    g = torch.Generator().manual_seed(0)
    out = datalib.augment(batch, g, crop=train.crop)
    assert out.shape == (2, 3, 224, 224)
    assert any(torch.equal(out[0], v) for dy in range(33) for dx in range(33)
               for v in (batch[0, :, dy:dy + 224, dx:dx + 224], batch[0, :, dy:dy + 224, dx:dx + 224].flip(2)))
    x = datalib.to_float(test.images)
    assert x.shape == (10, 3, 224, 224) and len(test.labels.unique()) == 10  # centre crops of the val images
    assert test.fingerprint() == datalib.load("imagenet", "test", tmp_path, subset=10, seed=0).fingerprint()


def test_imagenet_with_too_few_classes_fails_in_one_line(tmp_path):
    _write_imagenet(tmp_path, n_classes=3)
    with pytest.raises(datalib.DataMissingError, match="3 class folders"):
        datalib.load("imagenet", "train", tmp_path)


def test_default_augmentation_draws_the_same_crops_as_before():
    """The padded-crop path is unchanged by the crop option: the same random numbers, so every stored run's batches."""
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    out = datalib.augment(x, g1)
    dy = torch.randint(0, 9, (16,), generator=g2)
    dx = torch.randint(0, 9, (16,), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)


def test_fetch_imagenet_says_how_to_place_it_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVMOE_DATA", str(tmp_path))
    assert cli(["fetch", "imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never downloaded" in err[0] and str(tmp_path / "imagenet") in err[0]
