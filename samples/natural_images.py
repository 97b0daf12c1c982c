"""Real photographs that ship inside scikit-image and scikit-learn, cut into ImageNet-style crops.

No ImageNet data is available offline; these photos (cat, coffee, astronaut, rocket, ...) give real inputs for
comparing an original ImageNet model with its compressed version (top-1 agreement, logit error) and for a short
distillation fine-tune. Different ``seed`` values give different crops.

``split`` keeps calibration and evaluation apart at the level of photos, not only of crops: "calibration" and
"evaluation" are disjoint sets of photos (grey ones are repeated over the three channels), so a model calibrated
or fine-tuned on the first is measured on scenes it never saw. "all" is the original eight colour photos, kept for
the rank-search benchmark's recorded results.
"""

import warnings

import numpy as np
import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

# (source, name): scikit-image's skimage.data.<name>() or scikit-learn's load_sample_images() file name
_ALL = (("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"), ("skimage", "rocket"),
        ("skimage", "hubble_deep_field"), ("skimage", "immunohistochemistry"), ("sklearn", "china.jpg"),
        ("sklearn", "flower.jpg"))
SPLITS = {
    "all": _ALL,
    "calibration": (("skimage", "astronaut"), ("skimage", "coffee"), ("skimage", "rocket"),
                    ("skimage", "immunohistochemistry"), ("sklearn", "china.jpg"), ("skimage", "camera"),
                    ("skimage", "coins"), ("skimage", "brick"), ("skimage", "grass")),
    "evaluation": (("skimage", "chelsea"), ("skimage", "hubble_deep_field"), ("sklearn", "flower.jpg"),
                   ("skimage", "retina"), ("skimage", "clock"), ("skimage", "moon"), ("skimage", "gravel")),
}


def _load(source: str, name: str):
    if source == "skimage":
        from skimage import data

        return getattr(data, name)()
    from sklearn.datasets import load_sample_images

    found = load_sample_images()
    for file_name, image in zip(found.filenames, found.images):
        if file_name.endswith(name):
            return image
    raise LookupError(name)


def photos(split: str = "all") -> list[np.ndarray]:
    """RGB uint8 photos [H, W, 3] of ``split`` (those that load without a network)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    images = []
    for source, name in SPLITS[split]:
        try:
            img = _load(source, name)
        except Exception as error:  # noqa: BLE001 - a missing package, or a file that needs a download
            warnings.warn(f"photo {source}:{name} of split {split!r} is left out: it did not load ({error!r})")
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim == 3 and img.shape[2] >= 3 and img.dtype == np.uint8:
            images.append(np.ascontiguousarray(img[:, :, :3]))
    if not images:
        raise RuntimeError("no sample photos: install scikit-image and/or scikit-learn (pip install -e '.[samples]')")
    return images


def crops(count: int, seed: int, size: int = 224, split: str = "all") -> torch.Tensor:
    """``count`` normalised crops [count, 3, size, size] of ``split``'s photos: random-resized crops (scale 0.15-1)
    and flips."""
    rng = np.random.default_rng(seed)
    sources = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255.0 for p in photos(split)]
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
