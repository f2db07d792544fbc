"""Torch datasets over canonical manifests, with PortraitNet-style augmentation.

Training (ExtremeC3Net, the comparison nets, the teacher) and evaluation all read
samples through ``ManifestDataset`` so resizing and normalisation are the same
everywhere. Augmentation uses albumentations instead of hand-written warps; for training,
``SeededAugmentation`` seeds it per sample and epoch (the training loop sets the epoch, or
passes it with each index), so a resumed run draws the same augmentations as an
uninterrupted one.

``CachedSamples`` is the fast path (``train.settings.cache_resized``): every sample decoded
once and kept in memory already shrunk towards the training size (``cache_short_side``), so an epoch neither
decodes 600x800 JPEGs again nor warps them at full size; the augmentation that follows is
the same, on fewer pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from pipeline.images import strip_root
from pipeline.manifest import load_sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TRAIN_SCALE = (0.5, 1.5)  # PortraitNet's zoom range (train_transform)


def train_transform(size: int | tuple[int, int], *, rotate_limit: float = 45, scale: tuple[float, float] = TRAIN_SCALE,
                    shift: float = 0.25, flip: bool = True, color: float = 0.1, blur_p: float = 0.3,
                    noise_p: float = 0.3):
    """PortraitNet's augmentation: deformation (rotation, scale, shift, flip) then texture
    (brightness/contrast/saturation/hue, Gaussian blur, Gaussian noise)."""
    import albumentations as A
    import cv2

    h, w = (size, size) if isinstance(size, int) else size
    steps = [
        A.Affine(rotate=(-rotate_limit, rotate_limit), scale=scale, translate_percent=(-shift, shift),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
        A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [
        A.ColorJitter(brightness=color * 4, contrast=color * 4, saturation=color * 4, hue=color / 2, p=0.8),
        A.GaussianBlur(blur_limit=(3, 5), p=blur_p),
        A.GaussNoise(std_range=(0.02, 0.06), p=noise_p),
    ]
    return A.Compose(steps)


def eval_transform(size: int | tuple[int, int]):
    import albumentations as A
    import cv2

    h, w = (size, size) if isinstance(size, int) else size
    return A.Compose([A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> normalised (3, H, W) float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class ManifestDataset(Dataset):
    """Samples of a canonical manifest (rows with masks) as (image tensor, mask tensor, id).

    ``root`` is the directory the manifest's relative paths start from.
    """

    def __init__(self, root: str | os.PathLike, frame: pd.DataFrame, transform=None, require_mask: bool = True):
        self.root = Path(root)
        if require_mask:
            frame = frame[frame["mask"] != ""]
        self.rows = frame.reset_index(drop=True)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows.iloc[index]
        image, mask = load_sample(self.root, row)
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=bool)
        mask_u8 = mask.astype(np.uint8)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask_u8)
            image, mask_u8 = out["image"], out["mask"]
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask_u8.astype(np.float32)), "id": row["id"]}


class SeededAugmentation(Dataset):
    """A training dataset whose sample ``i`` is augmented from (epoch seed, ``i``) alone.

    ``transform`` is the augmentation the wrapped dataset applies (shared by every part of a
    concatenation); before each sample it is reseeded, so the draws do not depend on which
    process loads the sample or on what was loaded before it: a resumed run (and, later,
    each distributed rank) augments exactly as an uninterrupted one. The training loop calls
    ``reseed`` at the start of every epoch.
    """

    def __init__(self, dataset: Dataset, transform, seed: int = 0):
        self.dataset, self.transform = dataset, transform
        self.epoch_seed = seed

    def reseed(self, epoch_seed: int) -> None:
        self.epoch_seed = int(epoch_seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """Sample ``index`` of the current epoch, or ``(epoch_seed, index)``: the seed travels with
        the index, so loader processes that outlive an epoch (``persistent_workers``) draw
        exactly what a fresh process reseeded by ``reseed`` would."""
        epoch_seed, index = index if isinstance(index, tuple) else (self.epoch_seed, index)
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed((int(epoch_seed) * 1_000_003 + int(index)) % 2**32)
        return self.dataset[index]


def cache_short_side(input_size: int) -> int:
    """The short side a training sample is cached at: ``input_size`` times the largest zoom of
    ``train_transform``, so even the strongest zoom-in samples cached pixels no coarser than the
    output's (cached at ``input_size`` itself, zoomed crops came out blurred and the loss rose)."""
    return math.ceil(input_size * TRAIN_SCALE[1])


def shrink_to_short_side(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask scaled (aspect kept) so the shorter side is ``size``; never enlarged.

    What the cache keeps for training: the augmentation (an affine warp in the image's own
    frame, then the resize to the square training size) sees the same geometry as at full
    size. The image is area-averaged (no aliasing), the mask nearest-neighbour (stays 0/1).
    """
    import cv2

    h, w = image.shape[:2]
    scale = size / min(h, w)
    if scale >= 1:
        return image, mask
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    # the mask by linear interpolation thresholded at one half: aligned with the image's pixel
    # centres (OpenCV's nearest neighbour shifts it by up to a pixel, a label noise that raised the loss)
    shrunk_mask = cv2.resize(mask.astype(np.float32), target, interpolation=cv2.INTER_LINEAR) >= 0.5
    return cv2.resize(image, target, interpolation=cv2.INTER_LINEAR), shrunk_mask.astype(np.uint8)


class CachedSamples(Dataset):
    """Samples held in memory as uint8 arrays (image HxWx3, mask HxW of 0/1), transformed on access.

    Build it from a manifest with ``from_manifest`` (each row decoded once, then ``prepare``:
    ``shrink_to_short_side`` for training, the evaluation resize for validation) or from
    arrays (the GPU bundle). Items are what ``ManifestDataset`` returns. Loader processes
    started after the cache is built share its arrays (fork, copy-on-write).
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], ids: list[str], transform=None):
        if not len(images) == len(masks) == len(ids):
            raise ValueError(f"{len(images)} images, {len(masks)} masks and {len(ids)} ids")
        for image, mask, sample_id in zip(images, masks, ids):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
                raise ValueError(f"{sample_id}: expected an HxWx3 uint8 image and an HxW mask, got "
                                 f"{image.shape} {image.dtype} and {mask.shape}")
        self.images, self.masks, self.ids = list(images), [m.astype(np.uint8) for m in masks], list(ids)
        self.transform = transform

    @classmethod
    def from_manifest(cls, root: str | os.PathLike, frame: pd.DataFrame, prepare, transform=None,
                      progress: bool = False, workers: int = 1) -> "CachedSamples":
        """Decode every row with a mask once (``workers`` threads: decoding and resizing release
        the GIL) and keep ``prepare(image, mask_u8)``."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        rows = frame[frame["mask"] != ""].reset_index(drop=True)

        def load(index: int) -> tuple[np.ndarray, np.ndarray]:
            image, mask = load_sample(root, rows.iloc[index])
            return prepare(image, mask.astype(np.uint8))

        with ThreadPoolExecutor(max(1, workers)) as pool:
            loaded = list(tqdm(pool.map(load, range(len(rows))), total=len(rows), desc="caching resized samples",
                               unit="image", leave=False, disable=not progress))
        return cls([i for i, _ in loaded], [m for _, m in loaded], rows["id"].tolist(), transform)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask.astype(np.float32)), "id": self.ids[index]}

    def nbytes(self) -> int:
        return sum(i.nbytes + m.nbytes for i, m in zip(self.images, self.masks))


def evaluation_resize(size: int | tuple[int, int]):
    """``prepare`` for a cached validation set: ``eval_transform`` applied once, so every epoch
    validates on exactly the pixels the uncached path would produce."""
    transform = eval_transform(size)

    def prepare(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = transform(image=image, mask=mask)
        return out["image"], out["mask"]

    return prepare


def manifest_datasets(frame: pd.DataFrame, transform=None) -> Dataset:
    """One dataset over rows of several canonical datasets (their folder in a ``_root`` column)."""
    parts = [ManifestDataset(root, rows.drop(columns="_root"), transform)
             for root, rows in frame.groupby("_root", sort=True)]
    return ConcatDataset(parts) if parts else Subset([], [])  # ConcatDataset refuses an empty list


# What reading one sample can raise when its files are bad: BadImageError (a ValueError;
# pipeline.images also turns PIL's DecompressionBombError into it) and load_sample's size check.
UNREADABLE_SAMPLE = (ValueError, OSError)


def readable_rows(root: str | os.PathLike, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The rows whose image (and mask) decode, and ``{"id", "reason"}`` for every other one.

    Reasons name files relative to ``root``, so a skip list is the same on every checkout.

    Decoding each sample once up front costs a pass over the files, but a bad file found
    inside a DataLoader would abort a training run midway instead of being skipped.
    """
    keep, skipped = [], []
    for index, row in frame.iterrows():
        try:
            load_sample(root, row)
        except UNREADABLE_SAMPLE as exc:
            skipped.append({"id": row["id"], "reason": strip_root(str(exc), root)})
        else:
            keep.append(index)
    return frame.loc[keep], skipped


