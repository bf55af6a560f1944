"""The data the reference models train on, scaled to each model's input.

Every dataset is held as uint8 images `(N, C, H, W)` with integer labels, exactly as
it comes; `to_model_input` turns a batch into what a model takes (channels, size,
normalisation) when the batch is used, so that a 60,000-image dataset is not also
held at 3x32x32 float32 for the CIFAR models.

`digits` (the default) is scikit-learn's bundled 8x8 handwritten digits: real data
that needs no download, split once and for all into 1437 training and 360 test
images. `mnist`, `fashion-mnist` and `cifar10` are torchvision's datasets, read from
`--data-root`. torchvision reads the CIFAR-10 batches with pickle; it does so only
after their md5 matched the published files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ckpttool.errors import DatasetError, UsageError

# The first images of the test split, always the same: their logits are recorded in
# the manifest, so any reload of a fixture can be compared number for number.
PROBE_SIZE = 16

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

# ITU-R BT.601 luma weights: how the 28x28x1 models see a colour image.
_LUMA = (0.299, 0.587, 0.114)

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclass(frozen=True)
class ImageSplit:
    """One split: uint8 images `(N, C, H, W)` and int64 labels `(N,)`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ReferenceData:
    """A dataset ready to train on: its splits and how to scale its pixels."""

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int
    # Pixel values run from 0 to `pixel_max` (16 for digits, 255 otherwise).
    pixel_max: float
    # Mean and standard deviation of the training pixels after scaling to [0, 1].
    mean: float
    std: float

    def model_input(self, images: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
        return to_model_input(images, input_shape, self.pixel_max, self.mean, self.std)

    def probe_batch(self, input_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed probe batch: the first `PROBE_SIZE` test images and labels."""
        images = self.test.images[:PROBE_SIZE]
        return self.model_input(images, input_shape), self.test.labels[:PROBE_SIZE]


def to_model_input(
    images: torch.Tensor,
    input_shape: tuple[int, int, int],
    pixel_max: float,
    mean: float,
    std: float,
) -> torch.Tensor:
    """Scale uint8 images to a model's `(C, H, W)`, normalised; deterministic on CPU."""
    channels, height, width = input_shape
    x = images.to(torch.float32) / pixel_max
    x = _match_channels(x, channels)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return (x - mean) / std


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise UsageError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def load_dataset(name: str, root: Path | None = None, download: bool = False) -> ReferenceData:
    """Load a reference dataset by its CLI name; `root` is needed for all but digits."""
    if name == "digits":
        return load_digits()
    if name not in _TORCHVISION_DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose digits, mnist, fashion-mnist or cifar10")
    if root is None:
        raise UsageError(f"--dataset {name} reads torchvision's files: give --data-root DIR")
    return _load_torchvision(name, Path(root), download)


def load_digits() -> ReferenceData:
    """scikit-learn's 1797 handwritten digits, split 1437/360, stratified, fixed."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DatasetError("--dataset digits needs scikit-learn: pip install 'ckpttool[reference]'") from None
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype("uint8")).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype("int64"))
    train_idx, test_idx = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train = ImageSplit(images[train_idx], labels[train_idx])
    test = ImageSplit(images[test_idx], labels[test_idx])
    return _with_statistics("digits", train, test, pixel_max=16.0)


def _with_statistics(name: str, train: ImageSplit, test: ImageSplit, pixel_max: float) -> ReferenceData:
    mean, std = pixel_statistics(train.images, pixel_max)
    num_classes = int(torch.cat([train.labels, test.labels]).max()) + 1
    return ReferenceData(name, train, test, num_classes, pixel_max, mean, std)


def pixel_statistics(images: torch.Tensor, pixel_max: float) -> tuple[float, float]:
    """Exact mean and standard deviation of uint8 pixels scaled to [0, 1].

    Computed from a histogram of the 256 possible values: exact, order-independent
    and light even for CIFAR-10's 150 million pixels.
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / pixel_max
    total = counts.sum()
    mean = (counts * values).sum() / total
    variance = (counts * (values - mean) ** 2).sum() / total
    return float(mean), float(variance.sqrt())


# CLI name -> (torchvision class name, folder under root, files torchvision needs).
_TORCHVISION_DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mnist": ("MNIST", "MNIST/raw", _MNIST_FILES),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", _MNIST_FILES),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", _CIFAR10_FILES),
}


def missing_files(name: str, root: Path) -> list[Path]:
    """The files torchvision needs for `name` under `root` that are not there."""
    _, folder, files = _TORCHVISION_DATASETS[name]
    return [root / folder / file for file in files if not (root / folder / file).is_file()]


def _load_torchvision(name: str, root: Path, download: bool) -> ReferenceData:
    missing = missing_files(name, root)
    if missing and not download:
        listed = ", ".join(str(path.relative_to(root)) for path in missing)
        raise DatasetError(
            f"{name} is not there: missing {listed}; run again with --download to fetch "
            f"it (needs network access), or copy torchvision's {name} files there",
            path=str(root),
        )
    train = _read_torchvision_split(name, root, train=True, download=download)
    test = _read_torchvision_split(name, root, train=False, download=False)
    return _with_statistics(name, train, test, pixel_max=255.0)


def _read_torchvision_split(name: str, root: Path, train: bool, download: bool) -> ImageSplit:
    import torchvision.datasets

    class_name = _TORCHVISION_DATASETS[name][0]
    dataset_class = getattr(torchvision.datasets, class_name)
    try:
        dataset = dataset_class(str(root), train=train, download=download)
    except (RuntimeError, OSError, ValueError) as error:
        # torchvision says "not found or corrupted" for a failed md5 or download.
        raise DatasetError(f"{name} cannot be read: {error}", path=str(root)) from error
    images = torch.as_tensor(dataset.data)
    # MNIST-style data is (N, H, W); CIFAR-10 is (N, H, W, C).
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return ImageSplit(images.contiguous(), labels)
