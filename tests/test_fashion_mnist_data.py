"""The Fashion-MNIST data + model zoo of the benchmarks (benchmarks/data_models/fashion_mnist.py): IDX reading,
loaders, the ResNet and the cache. No training of the real model here; tests that need the real files skip
when Debian's `dataset-fashion-mnist` is not installed."""

import gzip
import json

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.data_models import fashion_mnist as fm

needs_data = pytest.mark.skipif(
    not fm.dataset_available(),
    reason=f"Fashion-MNIST files not in {fm.DATA_DIR}; install with: {fm.INSTALL_HINT}")


def _write_idx(path, array, magic=None):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


# ---------------------------------------------------------------------------------------- IDX and errors (no data)


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(fm._read_idx(tmp_path / "a.gz"), a)


@pytest.mark.parametrize("magic", [0x0D03, 0x0800, 0x01000803])  # float data, no dimensions, junk high bytes
def test_read_idx_rejects_bad_magic(tmp_path, magic):
    _write_idx(tmp_path / "bad.gz", np.zeros((2, 2)), magic=magic)
    with pytest.raises(ValueError, match="not an IDX file"):
        fm._read_idx(tmp_path / "bad.gz")


def test_read_idx_rejects_truncated_data(tmp_path):
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write((0x0801).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(7))
    with pytest.raises(ValueError, match="need 10 bytes"):
        fm._read_idx(tmp_path / "short.gz")


def test_missing_files_error_tells_the_apt_command(tmp_path):
    assert not fm.dataset_available(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("validation", data_dir=tmp_path)


def test_loaders_on_a_fake_data_dir(tmp_path):
    # The loader pipeline end to end on tiny IDX files, so that it is covered even without the real data.
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        images_file, labels_file = fm.FILES[split]
        _write_idx(tmp_path / images_file, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / labels_file, np.arange(n) % 10)
    train, test = fm.fashion_mnist_loaders(batch_size=16, test_batch_size=5, data_dir=tmp_path)
    x, y = next(iter(train))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 2  # 40 // 16, the partial batch dropped
    assert sum(len(y) for _, y in test) == 12
    # holdout leaves the last images out of training (a validation split), train_subset keeps the first of the rest
    images, _ = fm.load_fashion_mnist("train", data_dir=tmp_path)
    held, _ = fm.fashion_mnist_loaders(batch_size=16, data_dir=tmp_path, holdout=10)
    assert len(held.dataset) == 30 and torch.equal(held.dataset.x, fm.normalize(images[:30])[:, 0])
    assert len(fm.fashion_mnist_loaders(batch_size=4, data_dir=tmp_path, holdout=10, train_subset=8)[0].dataset) == 8
    for bad in (-1, 40):
        with pytest.raises(ValueError, match=f"holdout must be in \\[0, 40\\) training images, got {bad}"):
            fm.fashion_mnist_loaders(data_dir=tmp_path, holdout=bad)


# ----------------------------------------------------------------------------------------------- real data set


@needs_data
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_load_fashion_mnist(split, n):
    images, labels = fm.load_fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), n // 10))  # balanced, labels 0-9
    assert int(images.max()) == 255 and int(images.min()) == 0


@needs_data
def test_loaders_real_data():
    train, test = fm.fashion_mnist_loaders(batch_size=64, test_batch_size=256)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    assert len(train) == 60000 // 64 and len(test.dataset) == 10000
    xt, yt = next(iter(test))
    assert xt.shape == (256, 1, 28, 28) and yt.dtype == torch.int64
    # Normalised with the training statistics: the whole training set has mean 0, std 1 (to the rounding of
    # MEAN and STD); the test set is close.
    assert abs(float(train.dataset.x.mean())) < 1e-3 and abs(float(train.dataset.x.std()) - 1) < 1e-3
    assert abs(float(test.dataset.x.mean())) < 0.02
    # Black background pixels map to -MEAN/STD; augmentation pads with that value too.
    assert float(test.dataset.x.min()) == pytest.approx(-fm.MEAN / fm.STD)
    assert float(x.min()) == pytest.approx(-fm.MEAN / fm.STD)


@needs_data
def test_test_loader_is_deterministic_and_unaugmented():
    _, test = fm.fashion_mnist_loaders(augment=True, test_batch_size=100)
    x1, y1 = next(iter(test))
    x2, y2 = next(iter(test))
    images, labels = fm.load_fashion_mnist("test")
    assert torch.equal(x1, x2) and torch.equal(y1, labels[:100])
    assert torch.allclose(x1, fm.normalize(images[:100]))


def test_augmentation_shapes_and_flip(monkeypatch):
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, :, :3] = 255  # a bright stripe on the left
    ds = fm.FashionMNISTDataset(images, torch.tensor([3]), augment=True)
    np.random.seed(0)
    seen_flipped = seen_plain = False
    for _ in range(40):
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and int(y) == 3
        right_bright = bool((x[0, :, -6:] > 0).any())
        seen_flipped |= right_bright
        seen_plain |= not right_bright
    assert seen_flipped and seen_plain


# ----------------------------------------------------------------------------------------------------- model


def test_resnet_fmnist_forward_and_structure():
    model = fm.ResNetFMNIST().eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    big_kxk = [m for m in convs if m.kernel_size == (3, 3) and min(m.in_channels, m.out_channels) >= 64]
    assert len(big_kxk) >= 8  # decomposition has something to work on
    assert sum(p.numel() for p in model.parameters()) == 2_797_034  # documented in the module docstring
    with pytest.raises(ValueError, match="4 positive"):
        fm.ResNetFMNIST((32, 64, 128))


def test_resnet_fmnist_widths_configurable():
    model = fm.ResNetFMNIST((8, 16, 16, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.layer4[0].conv1.out_channels == 32 and model.fc.in_features == 32


def test_evaluate_accuracy():
    class Oracle(nn.Module):  # predicts the class written in the first pixel
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    x = torch.zeros(10, 1, 28, 28)
    x[:, 0, 0, 0] = torch.arange(10).float()
    y = torch.arange(10)
    y[:3] = 9  # 3 wrong
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    assert fm.evaluate(Oracle(), loader, progress=False) == pytest.approx(0.7)


# ----------------------------------------------------------------------------------------------------- cache


def test_cache_hit_loads_without_training(tmp_path, monkeypatch):
    widths = (4, 8, 8, 8)
    reference = fm.ResNetFMNIST(widths)
    weights, sidecar = fm.cache_paths(widths, epochs=7, seed=1, cache_dir=tmp_path)
    assert weights.name == "resnet_fmnist_w4-8-8-8_e7_s1.pth" and sidecar.suffix == ".json"
    assert fm.cache_paths(widths, epochs=7, seed=1, cache_dir=tmp_path, holdout=10000)[0].name == \
        "resnet_fmnist_w4-8-8-8_e7_s1_h10000.pth"  # a model trained without the last 10000 images is cached apart
    torch.save(reference.state_dict(), weights)
    sidecar.write_text(json.dumps({"test_accuracy": 0.93, "epochs": 7, "seconds": 1.0, "widths": list(widths)}))
    monkeypatch.setattr(fm, "train", lambda *a, **k: pytest.fail("a cache hit must not train"))
    model, info = fm.get_trained_resnet_fmnist(widths, epochs=7, cache_dir=tmp_path, seed=1, verbose=False)
    assert info["accuracy"] == 0.93 and not model.training
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_cached_real_model_if_present():
    """The cached benchmark model (trained once with `--train`), when this machine has it: loads and the sidecar
    records >= 92% test accuracy."""
    weights, sidecar = fm.cache_paths()
    if not (weights.exists() and sidecar.exists()):
        pytest.skip(f"no cached model at {weights} (python -m benchmarks.data_models.fashion_mnist --train)")
    model, info = fm.get_trained_resnet_fmnist(verbose=False)
    assert info["accuracy"] >= 0.92 and info["widths"] == list(fm.DEFAULT_WIDTHS)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
