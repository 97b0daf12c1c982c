"""Real photographs that ship inside scikit-image and scikit-learn, cut into ImageNet-style crops.

No ImageNet data is available offline; these photos (cat, coffee, astronaut, rocket, ...) give real inputs for
comparing an original ImageNet model with its compressed version (top-1 agreement, logit error) and for a short
distillation fine-tune. Different ``seed`` values give different crops, so fine-tuning and evaluation crops differ.
"""

import numpy as np
import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
_SKIMAGE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def photos() -> list[np.ndarray]:
    """RGB uint8 photos [H, W, 3] from scikit-image and scikit-learn (those that load without a network)."""
    images = []
    try:
        from skimage import data

        for name in _SKIMAGE_NAMES:
            try:
                img = getattr(data, name)()
            except Exception:  # noqa: BLE001 - some need a download, which is not possible here
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                images.append(np.ascontiguousarray(img[:, :, :3]))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        images.extend(load_sample_images().images)
    except ImportError:
        pass
    if not images:
        raise RuntimeError("no sample photos: install scikit-image and/or scikit-learn (pip install -e '.[samples]')")
    return images


def crops(count: int, seed: int, size: int = 224) -> torch.Tensor:
    """``count`` normalised crops [count, 3, size, size]: random-resized crops (scale 0.15-1) and flips."""
    rng = np.random.default_rng(seed)
    sources = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255.0 for p in photos()]
    out = torch.empty(count, 3, size, size)
    for i in range(count):
        img = sources[i % len(sources)]
        _, h, w = img.shape
        scale = rng.uniform(0.15, 1.0)
        side = int(min(h, w) * np.sqrt(scale))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[:, top : top + side, left : left + side]
        crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)[0]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = (crop - IMAGENET_MEAN) / IMAGENET_STD
    return out
