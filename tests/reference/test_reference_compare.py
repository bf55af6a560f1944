"""Exact where the machine fingerprint equals the recorded one, within the stated
tolerance elsewhere; the recorded numbers do not depend on the thread count."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from ckpttool.reference.compare import (
    DEFAULT_TOLERANCE,
    Mode,
    compare_logits,
    compare_metrics,
    comparison_mode,
)
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.fingerprint import differences, machine_fingerprint
from ckpttool.reference.manifest import Metrics, read_manifest
from ckpttool.reference.train import (
    Evaluation,
    TrainConfig,
    compute_probe_logits,
    evaluate_model,
    train,
)

EXACT = Mode(True, "same device")
TOLERANT = Mode(False, "another device")


def test_modes_follow_the_machine_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    here = machine_fingerprint(torch.device("cpu"))
    assert comparison_mode(here, torch.device("cpu")) == Mode(
        True, "this machine's fingerprint equals the recorded one"
    )
    for field, other in (("torch", "2.4.0"), ("cpu_capability", "SVE256"), ("cpu_model", "another CPU")):
        mode = comparison_mode({**here, field: other}, torch.device("cpu"))
        assert not mode.exact and mode.reason.startswith(f"fingerprint differs: {field}: {other} -> "), mode
        demanded = comparison_mode({**here, field: other}, torch.device("cpu"), demand_exact=True)
        assert demanded.exact and demanded.reason.startswith("--exact, although fingerprint differs: "), demanded
    assert not comparison_mode(None, torch.device("cpu")).exact
    # A CPU recording checked on a GPU is another device type.
    assert differences(here, {**here, "device": "cuda"}) == ["device: cpu -> cuda"]
    # Variables that steer the kernel libraries are part of it.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    mode = comparison_mode(here, torch.device("cpu"))
    assert not mode.exact and f"environment: {here['environment']} -> " in mode.reason
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in mode.reason


def test_fingerprint_reads_this_machine() -> None:
    fingerprint = machine_fingerprint(torch.device("cpu"))
    assert fingerprint["torch"] == torch.__version__
    assert fingerprint["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fingerprint["machine"] == platform.machine()
    assert all(isinstance(value, str) and value for value in fingerprint.values())
    assert machine_fingerprint(torch.device("cpu")) == fingerprint


def test_logits_exact_to_the_last_bit_or_within_atol_and_rtol() -> None:
    expected = torch.tensor([[10.0, -3.0, 0.0]])
    one_ulp = expected.clone()
    one_ulp.view(torch.int32)[0, 0] += 1
    assert compare_logits(expected, expected.clone(), EXACT, DEFAULT_TOLERANCE).ok
    assert not compare_logits(expected, one_ulp, EXACT, DEFAULT_TOLERANCE).ok
    assert compare_logits(expected, one_ulp, TOLERANT, DEFAULT_TOLERANCE).ok
    # atol 1e-4 + rtol 1e-4 * |10| = 1.1e-3 for the first value, 1e-4 for the zero.
    assert compare_logits(expected, expected + torch.tensor([[1e-3, 0, 0]]), TOLERANT, DEFAULT_TOLERANCE).ok
    failed = compare_logits(expected, expected + torch.tensor([[0, 0, 2e-4]]), TOLERANT, DEFAULT_TOLERANCE)
    assert not failed.ok and failed.detail.startswith("1 of 3 values beyond tolerance")
    assert not compare_logits(expected, expected[:, :2], TOLERANT, DEFAULT_TOLERANCE).ok


@pytest.mark.parametrize(
    ("accuracy", "loss", "exact_ok", "tolerant_ok"),
    [
        (0.5, 0.25, True, True),
        (0.5, 0.25 + 1e-6, False, True),
        (0.51, 0.25, False, True),  # one example of 100
        (0.52, 0.25, False, False),  # two examples
        (0.5, 0.2504, False, False),
    ],
)
def test_metrics_exact_or_one_example_and_tolerant_loss(
    accuracy: float, loss: float, exact_ok: bool, tolerant_ok: bool
) -> None:
    recorded = Metrics(accuracy=0.5, loss=0.25, examples=100)
    actual = Evaluation(accuracy=accuracy, loss=loss, examples=100)
    for mode, expected in ((EXACT, exact_ok), (TOLERANT, tolerant_ok)):
        results = compare_metrics("test", recorded, actual, mode, DEFAULT_TOLERANCE)
        assert [r.check for r in results] == ["test-accuracy", "test-loss"]
        assert all(r.ok for r in results) == expected, (mode, results)


def test_a_different_split_size_fails_both_metrics() -> None:
    recorded = Metrics(accuracy=0.5, loss=0.25, examples=100)
    results = compare_metrics("train", recorded, Evaluation(0.5, 0.25, 99), EXACT, DEFAULT_TOLERANCE)
    assert [r.ok for r in results] == [False, False] and "99" in results[0].detail


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nn", "cnn"])
def test_recorded_numbers_do_not_depend_on_the_thread_count(digits: ReferenceData, name: str) -> None:
    run = train(TrainConfig.for_model(name, epochs=1, steps_per_epoch=4), digits)
    threads = torch.get_num_threads()
    outcomes = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            outcomes.append(
                (
                    evaluate_model(run.model, digits, digits.test, run.spec.input_shape),
                    compute_probe_logits(run.model, digits, run.spec.input_shape).view(torch.int32),
                )
            )
    finally:
        torch.set_num_threads(threads)
    assert outcomes[0][0] == outcomes[1][0]
    assert torch.equal(outcomes[0][1], outcomes[1][1])
    assert torch.get_num_threads() == threads


def test_manifests_without_evaluation_or_locations_still_read(committed: Path, tmp_path: Path) -> None:
    data = json.loads((committed / "cnn" / "manifest.json").read_text())
    del data["evaluation"]
    for entry in data["files"]:
        del entry["locations"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(tmp_path)
    assert manifest.evaluation.metrics_device == manifest.training.device == "cpu"
    assert manifest.evaluation.probe_device == "cpu"
    assert all(record.locations == () for record in manifest.files)
