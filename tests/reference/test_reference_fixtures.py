"""Every file written loads back, through ckpttool's reader, to the manifest's logits,
bit for bit; checksums hold; the reader gives what torch itself restores."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttool.errors import CkptError, UsageError
from ckpttool.materialize import load, load_state_dict
from ckpttool.reference.choices import STYLE_NAMES
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.fingerprint import machine_fingerprint
from ckpttool.reference.fixtures import FixtureSet, build_fixtures, probe_images_sha256, train_config_of
from ckpttool.reference.manifest import (
    FileRecord,
    ManifestError,
    ProbeLogits,
    read_manifest,
    write_manifest,
)
from ckpttool.reference.models import ModelSpec, get_model_spec
from ckpttool.reference.resume import compare_states
from ckpttool.reference.saving import parse_styles
from ckpttool.reference.train import TrainConfig, compute_probe_logits, evaluate_model

# The loaders come from conftest.py as fixtures.
FixtureModelLoader = Callable[[Path, FileRecord, ModelSpec], torch.nn.Module]
GroundTruth = Callable[[Path, ModelSpec], Any]

EXPECTED_FILES = {
    "state_dict.pth": ("state-dict", "torch-zip", ""),
    "model.pth": ("whole-model", "torch-zip", ""),
    "checkpoint.pth.tar": ("state-dict-optimizer", "torch-zip", "state_dict"),
    "checkpoint_epoch002.pth.tar": ("state-dict-optimizer", "torch-zip", "state_dict"),
    "model_optimizer.pt": ("model-optimizer", "torch-zip", "model"),
    "general_checkpoint.tar": ("general-checkpoint", "torch-zip", "model_state_dict"),
    "model.safetensors": ("safetensors", "safetensors", ""),
}


def test_every_style_is_written_with_its_fixed_name(cnn_fixtures: FixtureSet) -> None:
    files = {r.path: (r.style, r.format, r.weights_root) for r in cnn_fixtures.manifest.files}
    assert files == EXPECTED_FILES
    on_disk = {path.name for path in cnn_fixtures.manifest_path.parent.iterdir()}
    assert on_disk == set(EXPECTED_FILES) | {"manifest.json"}


def test_sha256_and_size_match_the_files(cnn_fixtures: FixtureSet) -> None:
    directory = cnn_fixtures.manifest_path.parent
    for record in cnn_fixtures.manifest.files:
        data = (directory / record.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.size


def test_every_file_loads_back_to_the_manifest_logits(
    cnn_fixtures: FixtureSet, digits: ReferenceData, load_fixture_model: FixtureModelLoader
) -> None:
    directory = cnn_fixtures.manifest_path.parent
    manifest = read_manifest(directory)
    spec = get_model_spec(manifest.model.name)
    for record in manifest.files:
        model = load_fixture_model(directory, record, spec)
        logits = compute_probe_logits(model, digits, spec.input_shape)
        assert torch.equal(logits, record.probe_logits.to_tensor()), record.path


def test_reloaded_files_reproduce_the_manifest_accuracy(
    cnn_fixtures: FixtureSet, digits: ReferenceData, load_fixture_model: FixtureModelLoader
) -> None:
    directory = cnn_fixtures.manifest_path.parent
    spec = get_model_spec("cnn")
    for record in cnn_fixtures.manifest.files:
        model = load_fixture_model(directory, record, spec)
        test = evaluate_model(model, digits, digits.test, spec.input_shape)
        assert (test.accuracy, test.loss, test.examples) == (
            record.test.accuracy,
            record.test.loss,
            record.test.examples,
        ), record.path


def test_manifest_gives_back_the_training_config(cnn_fixtures: FixtureSet) -> None:
    assert train_config_of(cnn_fixtures.manifest) == cnn_fixtures.run.config


def test_periodic_checkpoint_holds_its_own_epoch(cnn_fixtures: FixtureSet) -> None:
    manifest = cnn_fixtures.manifest
    early, final = manifest.file("checkpoint_epoch002.pth.tar"), manifest.file("checkpoint.pth.tar")
    assert (early.epoch, final.epoch) == (2, 3)
    assert early.probe_logits != final.probe_logits


def test_training_checkpoints_hold_what_the_tutorials_save(cnn_fixtures: FixtureSet) -> None:
    directory = cnn_fixtures.manifest_path.parent
    general = load(str(directory / "general_checkpoint.tar"))
    assert set(general) == {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}
    assert general["epoch"] == 3
    assert general["loss"] == cnn_fixtures.manifest.training.epoch_losses[-1]
    assert set(load(str(directory / "checkpoint.pth.tar"))) == {"state_dict", "optimizer"}
    assert set(load(str(directory / "model_optimizer.pt"))) == {"model", "optimizer"}


def test_the_reader_gives_what_torch_restores(cnn_fixtures: FixtureSet, torch_load_ground_truth: GroundTruth) -> None:
    directory, spec = cnn_fixtures.manifest_path.parent, get_model_spec("cnn")
    for record in cnn_fixtures.manifest.files:
        path = directory / record.path
        truth = torch_load_ground_truth(path, spec)
        if record.style == "whole-model":
            # torch rebuilds the module; ckpttool gives the state_dict of its pickled tree.
            assert isinstance(truth, torch.nn.Module)
            expected, actual = truth.state_dict(), load_state_dict(str(path))
        else:
            expected, actual = truth, load(str(path))
        compared, mismatched = compare_states(expected, actual)
        assert compared >= 6 and mismatched == [], record.path


def test_manifest_round_trips_and_logits_are_exact(cnn_fixtures: FixtureSet) -> None:
    directory = cnn_fixtures.manifest_path.parent
    assert read_manifest(cnn_fixtures.manifest_path) == cnn_fixtures.manifest
    raw = json.loads(cnn_fixtures.manifest_path.read_text())
    assert raw["schema_version"] == 2
    # Where the numbers were computed, and on what kernels (`reference.fingerprint`).
    here = machine_fingerprint(torch.device("cpu"))
    assert raw["evaluation"]["metrics_fingerprint"] == raw["evaluation"]["probe_fingerprint"] == here
    entry = raw["files"][0]
    readable = torch.tensor(entry["probe_logits"]["values"], dtype=torch.float32)
    assert torch.equal(readable, read_manifest(directory).files[0].probe_logits.to_tensor())
    assert raw["model"]["args"] == {"in_channels": 1, "num_classes": 10}
    assert raw["probe"]["size"] == 16 and len(raw["probe"]["input_sha256"]) == 64
    assert raw["probe"]["images_sha256"] == probe_images_sha256(cnn_fixtures.run.data, 16)


def test_files_and_manifest_are_reproducible(digits: ReferenceData, tmp_path: Path) -> None:
    config = TrainConfig.for_model("nn", epochs=2)
    first = build_fixtures(config, digits, tmp_path / "first", checkpoint_every=1)
    again = build_fixtures(config, digits, tmp_path / "again", checkpoint_every=1)
    assert again.manifest_path.read_bytes() == first.manifest_path.read_bytes()
    for record in first.manifest.files:
        assert (tmp_path / "first" / record.path).read_bytes() == (tmp_path / "again" / record.path).read_bytes(), (
            record.path
        )


def test_probe_logits_keep_every_bit() -> None:
    logits = torch.tensor([[1 / 3, -0.0, float("inf"), 1e-45]], dtype=torch.float32)
    decoded = ProbeLogits.from_tensor(logits).to_tensor()
    assert decoded.view(torch.int32).tolist() == logits.view(torch.int32).tolist()


def test_style_subset_and_no_periodic_checkpoints(digits: ReferenceData, tmp_path: Path) -> None:
    fixtures = build_fixtures(
        TrainConfig.for_model("nn", epochs=3),
        digits,
        tmp_path,
        styles=parse_styles("safetensors,state-dict"),
        checkpoint_every=1,
    )
    assert [r.path for r in fixtures.manifest.files] == ["state_dict.pth", "model.safetensors"]


def test_parse_styles() -> None:
    assert parse_styles("all") == STYLE_NAMES
    assert parse_styles("safetensors, whole-model") == ("whole-model", "safetensors")
    with pytest.raises(UsageError, match="unknown save style pickle"):
        parse_styles("pickle,state-dict")


def test_unreadable_manifests_are_ckpt_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"kind": "something else"}')
    with pytest.raises(CkptError, match="not a valid reference manifest"):
        read_manifest(tmp_path)


def test_write_manifest_replaces_atomically(cnn_fixtures: FixtureSet, tmp_path: Path) -> None:
    path = write_manifest(cnn_fixtures.manifest, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert read_manifest(path) == cnn_fixtures.manifest


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nn", "neural-network", "cifar10-net", "resnet34"])
def test_other_models_load_back_from_every_style(
    digits: ReferenceData, tmp_path: Path, name: str, load_fixture_model: FixtureModelLoader
) -> None:
    config = TrainConfig.for_model(name, epochs=1, steps_per_epoch=2)
    fixtures = build_fixtures(config, digits, tmp_path)
    spec = get_model_spec(name)
    for record in fixtures.manifest.files:
        model = load_fixture_model(tmp_path, record, spec)
        logits = compute_probe_logits(model, digits, spec.input_shape)
        assert torch.equal(logits, record.probe_logits.to_tensor()), record.path


def test_archives_are_named_like_files_saved_straight_to_their_names(
    cnn_fixtures: FixtureSet,
) -> None:
    directory = cnn_fixtures.manifest_path.parent
    for record in cnn_fixtures.manifest.files:
        if record.format == "torch-zip":
            with zipfile.ZipFile(directory / record.path) as archive:
                root = archive.namelist()[0].split("/")[0]
            # torch drops the last extension: checkpoint.pth.tar -> checkpoint.pth
            assert root == os.path.splitext(record.path)[0], record.path


def test_fixture_files_get_the_usual_mode(cnn_fixtures: FixtureSet) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in cnn_fixtures.manifest_path.parent.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
