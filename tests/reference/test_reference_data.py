"""Digits scaled to each model's input with a fixed split; torchvision data from disk."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from ckpttool.errors import DatasetError, UsageError
from ckpttool.reference.data import (
    PROBE_SIZE,
    ReferenceData,
    load_dataset,
    load_digits,
    missing_files,
    pixel_statistics,
    to_model_input,
)


@pytest.mark.slow
def test_digits_split_is_fixed_and_stratified(digits: ReferenceData) -> None:
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.train.images.shape == (1437, 1, 8, 8)
    assert digits.train.images.dtype == torch.uint8
    assert digits.num_classes == 10
    # Stratified: every digit has 35 or 36 of the 360 test images.
    counts = torch.bincount(digits.test.labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    again = load_digits()
    assert torch.equal(again.test.images, digits.test.images)
    assert torch.equal(again.train.labels, digits.train.labels)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_digits_scale_to_each_model_input(digits: ReferenceData, shape: tuple[int, int, int]) -> None:
    batch = digits.model_input(digits.train.images[:5], shape)
    assert batch.shape == (5, *shape)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, digits.model_input(digits.train.images[:5], shape))


def test_normalised_training_pixels_have_zero_mean_unit_std(digits: ReferenceData) -> None:
    native = to_model_input(digits.train.images, (1, 8, 8), 16.0, digits.mean, digits.std)
    assert abs(float(native.mean())) < 1e-5
    assert abs(float(native.std()) - 1) < 1e-3


def test_pixel_statistics_are_exact() -> None:
    images = torch.tensor([0, 255, 255, 0], dtype=torch.uint8)
    assert pixel_statistics(images, 255.0) == (0.5, 0.5)


def test_colour_images_become_grey_for_one_channel_models() -> None:
    red = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255
    grey = to_model_input(red, (1, 28, 28), 255.0, 0.0, 1.0)
    assert grey.shape == (1, 1, 28, 28)
    assert torch.allclose(grey, torch.full_like(grey, 0.299))


def test_probe_batch_is_the_first_test_images(digits: ReferenceData) -> None:
    inputs, labels = digits.probe_batch((1, 28, 28))
    assert inputs.shape == (PROBE_SIZE, 1, 28, 28)
    assert torch.equal(labels, digits.test.labels[:PROBE_SIZE])


def test_missing_mnist_names_the_files_and_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as raised:
        load_dataset("mnist", tmp_path)
    message = str(raised.value)
    assert "MNIST/raw/train-images-idx3-ubyte" in message
    assert "t10k-labels-idx1-ubyte" in message
    assert "--download" in message


def test_missing_cifar10_names_its_batches(tmp_path: Path) -> None:
    missing = [path.name for path in missing_files("cifar10", tmp_path)]
    assert missing[0] == "data_batch_1" and "test_batch" in missing
    with pytest.raises(DatasetError, match="cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_torchvision_datasets_need_a_data_root() -> None:
    with pytest.raises(UsageError, match="--data-root"):
        load_dataset("fashion-mnist")


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An MNIST idx file: magic (uint8 data, n dims), big-endian sizes, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim())
    sizes = struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + sizes + array.numpy().tobytes())


def test_mnist_files_on_disk_are_read(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = torch.arange(6 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8)
    for prefix, count in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[: count * 784].view(count, 28, 28))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(count, dtype=torch.uint8))
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.train.images.shape == (6, 1, 28, 28)
    assert data.test.labels.tolist() == [0, 1, 2, 3]
    assert data.model_input(data.test.images, (3, 32, 32)).shape == (4, 3, 32, 32)
