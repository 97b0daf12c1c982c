"""Fashion-MNIST (the real data set, from Debian's `dataset-fashion-mnist` package) and a ResNet-18-style
classifier trained on it once and cached, for benchmarks that need a *trained* network (random weights are full
rank and say nothing about how a trained network decomposes).

    apt-get install -y dataset-fashion-mnist                 # files in /usr/share/datasets/fashion-mnist/
    python -m benchmarks.data_models.fashion_mnist --train   # trains (or loads) and prints test accuracy

No pretrained Fashion-MNIST model exists anywhere offline; `get_trained_resnet_fmnist` trains one (a few minutes
per epoch on 2 cores) and caches the state_dict under ~/.cache/nncf_tdplugin with a JSON sidecar (accuracy,
epochs, seconds, widths). Measured here: widths (32, 64, 128, 256), 3 epochs, one-cycle SGD -> 92.27% test
accuracy (41 min on 2 shared cores; about 5 min/epoch unshared).
"""

import argparse
import gzip
import json
import pathlib
import time
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

DATA_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = pathlib.Path.home() / ".cache" / "nncf_tdplugin"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x000008XX: unsigned byte data, XX dimensions
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir: pathlib.Path = DATA_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of ``split`` ("train": 60k, "test": 10k)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_file, labels_file = (data_dir / f for f in FILES[split])
    if not images_file.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {data_dir}. Install it with: apt-get update && apt-get install -y "
            f"dataset-fashion-mnist")
    return torch.from_numpy(_read_idx(images_file).copy()), torch.from_numpy(_read_idx(labels_file).astype(np.int64))


MEAN, STD = 0.2860, 0.3530  # of the 60k training images


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, augment: bool):
        self.x = (images.float() / 255.0 - MEAN) / STD
        self.y = labels
        self.augment = augment

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i][None]
        if self.augment:
            x = nn.functional.pad(x, (2, 2, 2, 2))
            dy, dx = np.random.randint(0, 5, size=2)
            x = x[:, dy:dy + 28, dx:dx + 28]
            if np.random.rand() < 0.5:
                x = x.flip(-1)
        return x, self.y[i]


def fashion_mnist_loaders(batch_size: int = 128, augment: bool = True, train_subset: Optional[int] = None):
    """(train_loader, test_loader), normalised; the train loader shuffles and augments (pad-crop + flip)."""
    xtr, ytr = load_fashion_mnist("train")
    if train_subset:
        xtr, ytr = xtr[:train_subset], ytr[:train_subset]
    xte, yte = load_fashion_mnist("test")
    train = torch.utils.data.DataLoader(_Dataset(xtr, ytr, augment), batch_size=batch_size, shuffle=True,
                                        drop_last=True)
    test = torch.utils.data.DataLoader(_Dataset(xte, yte, False), batch_size=512)
    return train, test


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetFMNIST(nn.Module):
    """ResNet-18 layout (4 stages x 2 BasicBlocks) for 28x28 grey images; 3x3 stem, no max-pool."""

    def __init__(self, widths=(32, 64, 128, 256), classes: int = 10):
        super().__init__()
        self.widths = tuple(widths)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def train(model: nn.Module, train_loader, epochs: int, lr: float = 0.1, weight_decay: float = 5e-4,
          label_smoothing: float = 0.05) -> None:
    """SGD + momentum with a one-cycle schedule."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(train_loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    for epoch in range(epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=None)
        for x, y in bar:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{float(loss):.3f}")


def get_trained_resnet_fmnist(widths=(32, 64, 128, 256), epochs: int = 3, cache_dir: pathlib.Path = CACHE_DIR,
                              min_accuracy: float = 0.92, seed: int = 0) -> tuple[ResNetFMNIST, dict]:
    """A trained ResNetFMNIST and its sidecar info, from the cache or trained now (and cached)."""
    cache_dir = pathlib.Path(cache_dir)
    stem = f"resnet_fmnist_w{'-'.join(map(str, widths))}_e{epochs}_s{seed}"
    weights, sidecar = cache_dir / f"{stem}.pth", cache_dir / f"{stem}.json"
    model = ResNetFMNIST(widths)
    if weights.exists() and sidecar.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), json.loads(sidecar.read_text())
    torch.manual_seed(seed)
    np.random.seed(seed)
    train_loader, test_loader = fashion_mnist_loaders()
    start = time.perf_counter()
    train(model, train_loader, epochs)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_loader)
    info = {"test_accuracy": accuracy, "epochs": epochs, "seconds": seconds, "widths": list(widths), "seed": seed,
            "threads": torch.get_num_threads()}
    if accuracy < min_accuracy:
        print(f"warning: trained accuracy {accuracy:.4f} is below {min_accuracy}; not cached")
        return model.eval(), info
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    sidecar.write_text(json.dumps(info, indent=2))
    return model.eval(), info


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train (or load) the cached model and report")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.train:
        _, info = get_trained_resnet_fmnist(epochs=args.epochs)
        print(json.dumps(info, indent=2))
