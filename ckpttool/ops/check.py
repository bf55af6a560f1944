"""`check`: the checks a CI pipeline runs before a model file ships.

Always: integrity (the reader's validation of every record, shape and offset, plus
each zip record's CRC-32 and the archive's anomalies) and safety (as `scan`). On
request: the keys, shapes and dtypes a model definition expects (`--model`), those
of a reference checkpoint (`--like`), no NaN/Inf (`--finite`), every storage on cpu
(`--cpu-only`). When keys do not match, suggestions name the fix that makes them
match (a prefix to strip or add, another root in the file) and how many keys it fixes.
Every finding has a severity; any `error` fails the check.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ckpttool.checkpoint import Checkpoint, TensorRef
from ckpttool.errors import about
from ckpttool.formats import read_checkpoint
from ckpttool.ops.keys import Expected, KeyComparison, compare, compare_with_model, found_weights, suggest_fixes
from ckpttool.ops.scan import DANGEROUS, NEEDS_ALLOWLIST, scan_file
from ckpttool.tensordata import ByteRange, chunks
from ckpttool.weights import all_tensors, find_weights

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass
class Finding:
    check: str
    severity: str
    key: str | None
    message: str


@dataclass
class CheckOptions:
    model_spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    like: str | None = None
    finite: bool = False
    cpu_only: bool = False
    root: str | None = None
    strict: bool = False  # warnings fail too


@dataclass
class CheckReport:
    path: str
    findings: list[Finding] = field(default_factory=list)
    keys: KeyComparison | None = None
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    def ok(self, strict: bool = False) -> bool:
        failing = {ERROR, WARNING} if strict else {ERROR}
        return not any(f.severity in failing for f in self.findings)

    def add(self, check: str, severity: str, message: str, key: str | None = None) -> None:
        self.findings.append(Finding(check, severity, key, message))


def check(path: str, options: CheckOptions) -> CheckReport:
    with about(path):
        return _check(path, options)


def _check(path: str, options: CheckOptions) -> CheckReport:
    report = CheckReport(path)
    checkpoint = read_checkpoint(path)  # unreadable files fail here: exit 2, not a finding
    _integrity(checkpoint, report)
    _safety(path, report)
    if options.model_spec or options.like:
        _keys(checkpoint, options, report)
    if options.finite:
        _finite(checkpoint, options.root, report)
    if options.cpu_only:
        _cpu_only(checkpoint, report)
    return report


def _integrity(checkpoint: Checkpoint, report: CheckReport) -> None:
    for anomaly in checkpoint.anomalies:
        report.add("integrity", WARNING, anomaly)
    recorded = [
        s for s in checkpoint.storages.values() if s.record and s.record.crc is not None and not s.record.compressed
    ]
    if recorded and all(s.record.crc == 0 for s in recorded if s.nbytes):  # type: ignore[union-attr]
        report.add("integrity", INFO, "the archive records no CRC-32s (saved with CRC computation off)")
        return
    for storage in recorded:
        record = storage.record
        assert record is not None and record.crc is not None
        if _crc(ByteRange(record.path, record.data_offset(), record.size)) != record.crc:
            report.add(
                "integrity",
                ERROR,
                f"record {record.name} fails its CRC-32 check: its bytes changed after saving",
                storage.key,
            )


def _crc(span: ByteRange) -> int:
    import zlib

    crc = 0
    for block in chunks(span):
        crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


def _safety(path: str, report: CheckReport) -> None:
    result = scan_file(path)
    if result.verdict == DANGEROUS:
        reasons = result.problems + [f"{g.qualname}: {g.reason}" for g in result.globals if g.verdict == DANGEROUS]
        report.add("safety", ERROR, "scan calls this file dangerous: " + "; ".join(reasons[:3]))
    elif result.verdict == NEEDS_ALLOWLIST:
        report.add("safety", WARNING, f"torch.load(weights_only=True) needs {result.allowlist}")


def _keys(checkpoint: Checkpoint, options: CheckOptions, report: CheckReport) -> None:
    found, metadata, root = found_weights(checkpoint, options.root)
    if options.model_spec:
        from ckpttool.ops.modelspec import build_model, expected_state

        model = build_model(options.model_spec, options.model_args)
        expected, source = expected_state(model), "model"

        def judge(weights: Expected) -> KeyComparison:
            return compare_with_model(model, expected, weights, metadata)
    else:
        expected, source = _reference(options), "like"

        def judge(weights: Expected) -> KeyComparison:
            return compare(weights, expected)

    comparison = judge(found)
    comparison.root = root
    report.keys = comparison
    for key in comparison.missing:
        report.add(source, ERROR, f"missing: {source} expects {key}", key)
    for key in comparison.unexpected:
        report.add(source, ERROR, f"unexpected: {source} has no {key}", key)
    for m in comparison.shape_mismatch:
        report.add(source, ERROR, f"size mismatch: checkpoint {m['checkpoint']}, {source} {m['expected']}", m["key"])
    for m in comparison.dtype_mismatch:
        severity = ERROR if source == "like" else WARNING  # load_state_dict casts; a reference must match
        report.add(source, severity, f"dtype: checkpoint {m['checkpoint']}, {source} {m['expected']}", m["key"])
    if comparison.missing or comparison.unexpected or comparison.shape_mismatch:
        report.suggestions = suggest_fixes(checkpoint, judge, comparison)


def _reference(options: CheckOptions) -> dict[str, tuple[tuple[int, ...], str]]:
    assert options.like is not None
    reference = find_weights(read_checkpoint(options.like).root)
    return {t.key: (t.tensor.shape, t.tensor.dtype) for t in reference.tensors}


def _finite(checkpoint: Checkpoint, root: str | None, report: CheckReport) -> None:
    from ckpttool.ops.stats import non_finite

    for named in find_weights(checkpoint.root, root).tensors:
        nan, inf = non_finite(named.tensor)
        if nan or inf:
            report.add("finite", ERROR, f"{nan} NaN and {inf} Inf values", named.key)


def _cpu_only(checkpoint: Checkpoint, report: CheckReport) -> None:
    devices = Counter(t.tensor.device for t in all_tensors(checkpoint.root) if isinstance(t.tensor, TensorRef))
    for device, count in devices.items():
        if device != "cpu":
            report.add(
                "cpu-only",
                ERROR,
                f"{count} tensors restore to {device}; fix: ckpttool remap {checkpoint.path} OUT --device cpu",
            )
