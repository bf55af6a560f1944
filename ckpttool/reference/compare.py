"""Comparing what a reloaded fixture does with what its manifest recorded.

Numbers recomputed on a machine whose fingerprint (`fingerprint.machine_fingerprint`:
torch build, device, CPU capability, instruction-set extensions and model, oneDNN,
BLAS, the environment variables that steer them) equals the recorded one must be
reproduced bit for bit: evaluation there runs the same kernels in the same order,
so any difference means the weights differ. Recomputed anywhere else (another CPU,
`ATEN_CPU_CAPABILITY=default`, a CUDA check of CPU-recorded numbers, another torch
release) they must agree within `Tolerance`:

- logits and losses: |actual - expected| <= atol + rtol * |expected|, with
  atol = rtol = 1e-4. Kernels that add the same float32 products in another order
  move the reference models' logits (of size up to ~20) by a few 1e-6: measured on
  the committed digits fixtures, ATen's default kernels against AVX-512 up to
  3.8e-6, oneDNN and MKL limited to AVX2 against AVX-512 of that order, oneDNN off
  against on up to 3.8e-6, two threads against one up to 2.9e-6, float32 against
  float64 up to 6.3e-6. A GPU kept off TF32 (see `train.reproducible`) is of that
  order too. The tolerance leaves a margin of more than ten over that, while any
  real change to the weights (a flipped exponent bit, another epoch's file) moves
  the logits far more.
- accuracy: at most one example may change its prediction, since a logit that moves
  within the tolerance can flip the argmax of a near tie.

`--exact` demands bit-exactness anyway, and the report says when the fingerprints
differ; `--atol`/`--rtol` replace the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ckpttool.reference.choices import DEFAULT_ATOL, DEFAULT_RTOL
from ckpttool.reference.fingerprint import Fingerprint, differences, machine_fingerprint
from ckpttool.reference.manifest import Metrics
from ckpttool.reference.resume import same_bits
from ckpttool.reference.train import Evaluation


@dataclass(frozen=True)
class Tolerance:
    """How far a number may move when it is recomputed on another device or torch."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    # Predictions that may change: a near tie can flip within the logits' tolerance.
    accuracy_examples: int = 1


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Mode:
    """Whether recorded numbers must be reproduced bit for bit, and why."""

    exact: bool
    reason: str


@dataclass(frozen=True)
class Comparison:
    """One recorded number (or tensor) against its recomputed value."""

    check: str
    ok: bool
    detail: str


def comparison_mode(recorded: Fingerprint | None, device: torch.device, demand_exact: bool = False) -> Mode:
    """Exact where this machine's fingerprint equals the recorded one (or when
    `demand_exact`); tolerant otherwise. The reason says which and why."""
    if recorded is None:
        why = "the manifest records no machine fingerprint"
    else:
        changed = differences(recorded, machine_fingerprint(device))
        if not changed:
            return Mode(True, "this machine's fingerprint equals the recorded one")
        more = f"; {len(changed) - 3} more" if len(changed) > 3 else ""
        why = "fingerprint differs: " + "; ".join(changed[:3]) + more
    if demand_exact:
        return Mode(True, f"--exact, although {why}")
    return Mode(False, why)


def compare_metrics(
    split: str, expected: Metrics, actual: Evaluation, mode: Mode, tolerance: Tolerance
) -> list[Comparison]:
    """`{split}-accuracy` and `{split}-loss` of one split."""
    if actual.examples != expected.examples:
        detail = f"the manifest has {expected.examples} examples, the dataset {actual.examples}"
        return [Comparison(f"{split}-{name}", False, detail) for name in ("accuracy", "loss")]
    return [
        _compare_accuracy(f"{split}-accuracy", expected, actual, mode, tolerance),
        _compare_number(f"{split}-loss", expected.loss, actual.loss, mode, tolerance),
    ]


def _compare_accuracy(
    check: str, expected: Metrics, actual: Evaluation, mode: Mode, tolerance: Tolerance
) -> Comparison:
    text = f"expected {expected.accuracy:.4f}, got {actual.accuracy:.4f}"
    if mode.exact:
        ok = actual.accuracy == expected.accuracy
        return Comparison(check, ok, f"{actual.accuracy:.4f}" if ok else text)
    moved = abs(round(actual.accuracy * actual.examples) - round(expected.accuracy * expected.examples))
    ok = moved <= tolerance.accuracy_examples
    return Comparison(check, ok, f"{text} ({moved} of {actual.examples} predictions differ)")


def _compare_number(check: str, expected: float, actual: float, mode: Mode, tolerance: Tolerance) -> Comparison:
    difference = abs(actual - expected)
    if mode.exact:
        ok = actual == expected or (math.isnan(actual) and math.isnan(expected))
        detail = f"expected {expected!r}, got {actual!r} (differs by {difference:.3g})"
        return Comparison(check, ok, f"{actual:.6g}" if ok else detail)
    ok = difference <= tolerance.atol + tolerance.rtol * abs(expected)
    return Comparison(check, ok, f"expected {expected:.6g}, got {actual:.6g} (differs by {difference:.2g})")


def compare_logits(expected: torch.Tensor, actual: torch.Tensor, mode: Mode, tolerance: Tolerance) -> Comparison:
    """The probe logits: every bit when exact, else every value within the tolerance."""
    check = "probe-logits"
    if expected.shape != actual.shape:
        return Comparison(check, False, f"expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    expected, actual = expected.to(torch.float32), actual.to(torch.float32)
    difference = (actual - expected).abs()
    largest = float(difference.nan_to_num(nan=math.inf).max()) if difference.numel() else 0.0
    if mode.exact:
        if same_bits(expected, actual):
            return Comparison(check, True, f"bit-exact, {expected.numel()} values")
        differing = int((expected.view(torch.int32) != actual.view(torch.int32)).sum())
        detail = f"{differing} of {expected.numel()} values differ, by up to {largest:.3g}"
        return Comparison(check, False, detail)
    close = torch.isclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    if bool(close.all()):
        return Comparison(check, True, f"within tolerance, differ by up to {largest:.2g}")
    beyond = int((~close).sum())
    detail = f"{beyond} of {expected.numel()} values beyond tolerance, by up to {largest:.3g}"
    return Comparison(check, False, detail)
