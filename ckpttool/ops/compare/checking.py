"""`check`: the checks a CI pipeline runs before a model file ships.

Always: integrity (the reader's validation of every record, shape and offset, plus
each zip record's CRC-32 and the archive's anomalies) and safety (as `scan`). On
request: the keys, shapes and dtypes a model definition expects (`--model`), those
of a reference checkpoint (`--like`), no NaN/Inf (`--finite`), every storage on cpu
(`--cpu-only`). Keys a warm start leaves out on purpose are allowed by glob
(`--allow-missing`, `--allow-unexpected`). When keys do not match, suggestions name
the fix that makes them match (a prefix to strip or add, another root in the file),
how many keys it fixes, and the `ckpttool convert` command that applies it.
Every finding has a severity; any `error` fails the check. A file that cannot be read
is an error finding of its own, so one bad path never hides the others.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ckpttool.checkpoint import Checkpoint, TensorRef
from ckpttool.errors import CkptError, IntegrityError, UnknownFormatError
from ckpttool.formats import LEGACY, LEGACY_TAR, TORCH_ZIP, OpenedFile, open_path, read_checkpoint
from ckpttool.gcpause import each_file
from ckpttool.ops.compare.keys import (
    Allowance,
    Expected,
    KeyComparison,
    Suggestion,
    compare,
    compare_with_model,
    found_weights,
    suggest_fixes,
)
from ckpttool.ops.safety.scan import NEEDS_ALLOWLIST, FileScan, danger, scan_opened
from ckpttool.pickle.judge import unknown_calls_by_allow
from ckpttool.pickle.weightsonly import allowlist_effect
from ckpttool.tensordata import verify_storage
from ckpttool.weights import Weights, all_tensors, find_weights

if TYPE_CHECKING:
    import torch

Severity = Literal["error", "warning", "info"]
ERROR: Severity = "error"
WARNING: Severity = "warning"
INFO: Severity = "info"
READ = "read"  # the check a file that cannot be read fails
REWRITABLE = frozenset({TORCH_ZIP, LEGACY, LEGACY_TAR})  # formats `convert --keep-structure` rewrites whole


@dataclass
class Remedy:
    """What to paste to act on a finding: shown whole on lines of its own, never cut."""

    label: str  # what the lines do, e.g. "to load with torch.load(weights_only=True):"
    lines: list[str]  # an option (`--allow NAME`) or Python (imports, the add_safe_globals line)


@dataclass
class Finding:
    check: str
    severity: Severity
    key: str | None
    message: str
    remedy: Remedy | None = None


@dataclass
class CheckOptions:
    model_spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    like: str | None = None
    finite: bool = False
    cpu_only: bool = False
    root: str | None = None
    strict: bool = False  # warnings fail too
    allow_missing: tuple[str, ...] = ()
    allow_unexpected: tuple[str, ...] = ()
    allow: dict[str, str] = field(default_factory=dict)  # globals vetted for this run, and where


@dataclass
class CheckReport:
    path: str
    findings: list[Finding] = field(default_factory=list)
    keys: KeyComparison | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    readable: bool = True
    allowed_missing: list[str] = field(default_factory=list)
    allowed_unexpected: list[str] = field(default_factory=list)
    against: str | None = None  # "model" or "reference" when keys were compared
    allow_hint: list[str] = field(default_factory=list)  # options that would accept the differences left

    def ok(self, strict: bool = False) -> bool:
        failing = {ERROR, WARNING} if strict else {ERROR}
        return not any(f.severity in failing for f in self.findings)

    def add(
        self, check: str, severity: Severity, message: str, key: str | None = None, remedy: Remedy | None = None
    ) -> None:
        self.findings.append(Finding(check, severity, key, message, remedy))

    def count(self, severity: Severity) -> int:
        return sum(f.severity == severity for f in self.findings)


@dataclass
class Target:
    """What the keys are compared with, built once for every path: a model or a reference."""

    check: str  # "model" or "like": the findings' check name
    expected: Expected
    model: torch.nn.Module | None = None

    @property
    def noun(self) -> str:
        return "model" if self.check == "model" else "reference"

    def judge(self, metadata: Any) -> Callable[[Expected], KeyComparison]:
        """Found keys -> comparison: the model's own load_state_dict, or plain equality."""
        model, expected = self.model, self.expected
        if model is None:
            return lambda found: compare(found, expected)
        return lambda found: compare_with_model(model, expected, found, metadata)


def prepare(options: CheckOptions) -> Target | None:
    """Build the model or read the reference. Their errors are the user's to fix before
    any file is checked (exit 2), unlike a file's own problems."""
    if options.model_spec:
        from ckpttool.ops.compare.modelspec import build_model, expected_state

        model = build_model(options.model_spec, options.model_args)
        return Target("model", expected_state(model), model)
    if options.like:
        reference = find_weights(read_checkpoint(options.like).root)
        return Target("like", {t.key: (t.tensor.shape, t.tensor.dtype) for t in reference.tensors})
    return None


def check_paths(paths: Sequence[str], options: CheckOptions) -> list[CheckReport]:
    target = prepare(options)
    return each_file(paths, lambda path: check(path, options, target))


def check(path: str, options: CheckOptions, target: Target | None = None) -> CheckReport:
    """Every finding about one file. A failure to read it, or a check that cannot be done
    on it (no weights at --root, a record that cannot be read), is an error finding."""
    if target is None:
        target = prepare(options)
    report = CheckReport(path)
    opened: OpenedFile | None = None
    try:
        opened = open_path(path)
        checkpoint = opened.checkpoint()
    except (CkptError, OSError) as exc:
        report.readable = False
        report.add(READ, ERROR, _message(exc, path))
        _safety_of_unreadable(opened or path, report, options.allow)
        return report
    _guarded(report, "integrity", lambda: _integrity(checkpoint, report))
    _guarded(report, "safety", lambda: _safety(opened, report, options.allow))
    if target is not None:
        report.against = target.noun
        _guarded(report, target.check, lambda: _keys(checkpoint, options, target, report))
    if options.finite:
        _guarded(report, "finite", lambda: _finite(checkpoint, options.root, report))
    if options.cpu_only:
        _cpu_only(checkpoint, report)
    return report


def _guarded(report: CheckReport, name: str, run: Callable[[], None]) -> None:
    try:
        run()
    except (CkptError, OSError) as exc:
        report.add(name, ERROR, _message(exc, report.path))


def _message(exc: BaseException, path: str) -> str:
    """The error without the file's own name (the report names it); another file's stays."""
    if isinstance(exc, CkptError):
        return exc.message if exc.path in (None, path) else str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename and exc.filename != path else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc)


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
        try:
            verify_storage(storage)
        except IntegrityError as exc:  # the message names the record and the tensors viewing it
            keys = storage.record.viewed_by() if storage.record and storage.record.viewed_by else []
            report.add("integrity", ERROR, exc.message, keys[0] if keys else storage.key)


def _safety_of_unreadable(source: OpenedFile | str, report: CheckReport, allow: dict[str, str]) -> None:
    """No checkpoint reader understands the file, but it may hold pickles (a plain zip of
    model.pkl, an .npy object array): when the scan calls it dangerous, that is the finding
    (exit 1), not an unreadable file."""
    try:
        _safety(source if isinstance(source, OpenedFile) else open_path(source), report, allow)
    except (CkptError, OSError):
        return
    report.readable = any(f.check == "safety" and f.severity == ERROR for f in report.findings)


_CALLS_SHOWN = 3


def _shown(calls: list[str]) -> str:
    more = len(calls) - _CALLS_SHOWN
    return "; ".join(calls[:_CALLS_SHOWN] + ([f"... and {more} more"] if more > 0 else []))


def _safety(opened: OpenedFile, report: CheckReport, allow: dict[str, str]) -> None:
    """As `scan`: of a folder, every file under it; each finding then names its file."""
    for where, result in _scanned(opened, allow):
        if isinstance(result, str):
            report.add("safety", ERROR, f"{where}cannot be scanned: {result}")
        else:
            _file_safety(result, report, where)


def _scanned(opened: OpenedFile, allow: dict[str, str]) -> list[tuple[str, FileScan | str]]:
    """(`name: ` or "" for the path itself, its scan or why it could not be scanned)."""
    path = opened.path
    if not os.path.isdir(path):
        return [("", scan_opened(opened, allow))]
    from ckpttool.ops.safety.paths import scan_folder

    entries = scan_folder(path, allow, opened)  # a DCP folder's own entry: the pickles of this opening
    if len(entries) == 1 and entries[0].path == path and not isinstance(entries[0], FileScan):
        raise UnknownFormatError(entries[0].error, path=path)  # no checkpoint in it at all
    named = [("" if e.path == path else f"{os.path.relpath(e.path, path)}: ", e) for e in entries]
    return [(where, e if isinstance(e, FileScan) else e.error) for where, e in named]


def _file_safety(result: FileScan, report: CheckReport, where: str) -> None:
    found = danger(result)
    if found is not None:
        report.add("safety", ERROR, f"{where}scan calls this file dangerous: " + "; ".join(found.reasons[:3]))
    for name, calls in unknown_calls_by_allow(result.globals).items():  # a TorchScript archive: one finding
        report.add(
            "safety",
            ERROR,
            f"{where}calls {_shown(calls)}: neither vetted nor a known gadget; if you trust it, --allow {name}",
            remedy=Remedy(
                "if you trust it, allow it (or [tool.ckpttool] allow in pyproject.toml):", [f"--allow {name}"]
            ),
        )
    if result.verdict == NEEDS_ALLOWLIST and result.allowlist:  # none for a trusted TorchScript archive
        # scan's own answer: the line is printed, but only `loads-after-allowlist` means it is enough.
        effect = allowlist_effect(result.weights_only.result)
        refused = result.weights_only.result != "loads-after-allowlist"
        why = f"; it refuses: {'; '.join(result.weights_only.reasons)}" if refused else ""
        remedy = Remedy(effect, [*result.imports, result.allowlist])
        report.add("safety", WARNING, f"{where}{effect} {result.allowlist}{why}", remedy=remedy)


def _keys(checkpoint: Checkpoint, options: CheckOptions, target: Target, report: CheckReport) -> None:
    found, metadata, weights = found_weights(checkpoint, options.root)
    judge = target.judge(metadata)
    comparison = judge(found)
    comparison.root = weights.root
    report.keys = comparison
    allow = Allowance(options.allow_missing, options.allow_unexpected)
    _key_findings(report, target, comparison, allow)
    if not allow.passes(comparison):
        report.suggestions = suggest_fixes(checkpoint, judge, comparison, allow)
        for suggestion in report.suggestions:
            suggestion.command = fix_command(checkpoint, weights, options.root, suggestion)
        report.allow_hint = _allow_hint(comparison, allow) if not report.suggestions else []


def _allow_hint(keys: KeyComparison, allow: Allowance) -> list[str]:
    """A warm start's signature — every key on one side loads, the other side has more —
    answered with the options that accept the extra keys."""
    if keys.shape_mismatch:
        return []
    missing = [k for k in keys.missing if not allow.missing_ok(k)]
    unexpected = [k for k in keys.unexpected if not allow.unexpected_ok(k)]
    if missing and not keys.unexpected:
        return [f"--allow-missing {shlex.quote(g)}" for g in module_globs(missing)]
    if unexpected and not keys.missing:
        return [f"--allow-unexpected {shlex.quote(g)}" for g in module_globs(unexpected)]
    return []


def module_globs(keys: Sequence[str], most: int = 3) -> list[str]:
    """At most `most` globs naming the modules that hold `keys` (`head.*`), or their
    top-level modules; none when even those are more."""
    for depth in (None, 1):
        globs = list(dict.fromkeys(_module_glob(k, depth) for k in keys))
        if len(globs) <= most:
            return globs
    return []


def _module_glob(key: str, depth: int | None) -> str:
    parts = key.split(".")[:-1][:depth]
    return ".".join(parts) + ".*" if parts else key


def _key_findings(report: CheckReport, target: Target, keys: KeyComparison, allow: Allowance) -> None:
    check, noun = target.check, target.noun
    for key in keys.missing:
        if allow.missing_ok(key):
            report.allowed_missing.append(key)
        else:
            report.add(check, ERROR, f"missing: in the {noun}, not in the file", key)
    for key in keys.unexpected:
        if allow.unexpected_ok(key):
            report.allowed_unexpected.append(key)
        else:
            report.add(check, ERROR, f"unexpected: not in the {noun}", key)
    for m in keys.shape_mismatch:
        shapes = f"file {_shape(m['checkpoint'])}, {noun} {_shape(m['expected'])}"
        report.add(check, ERROR, f"size mismatch: {shapes}", m["key"])
    for m in keys.dtype_mismatch:
        severity = ERROR if check == "like" else WARNING  # load_state_dict casts; a reference must match
        report.add(check, severity, f"dtype: file {m['checkpoint']}, {noun} {m['expected']}", m["key"])
    _allowance_findings(report, check, "missing", allow.missing, report.allowed_missing)
    _allowance_findings(report, check, "unexpected", allow.unexpected, report.allowed_unexpected)


def _allowance_findings(report: CheckReport, check: str, kind: str, globs: Sequence[str], allowed: list[str]) -> None:
    from fnmatch import fnmatchcase

    for glob in globs:
        hits = [k for k in allowed if fnmatchcase(k, glob)]
        what = f"{len(hits)} {kind} key{'s' if len(hits) != 1 else ''} allowed" if hits else f"no {kind} key matches"
        report.add(check, INFO, f"--allow-{kind} {glob}: {what}")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fix_command(checkpoint: Checkpoint, weights: Weights, root_option: str | None, fix: Suggestion) -> str:
    """The `ckpttool convert` command that applies `fix`. A rename inside a file that holds
    more than the weights (a training checkpoint) keeps the rest with --keep-structure."""
    path = checkpoint.path
    flag, value = fix.option
    if flag == "--root":
        return shlex.join(["ckpttool", "convert", path, fixed_name(path, value.replace(".", "_")), flag, value])
    argv = ["ckpttool", "convert", path, fixed_name(path)]
    whole_file = weights.root in ("", None)
    if not whole_file and weights.kind == "state_dict" and checkpoint.format in REWRITABLE:
        argv.append("--keep-structure")
    if root_option is not None:
        argv += ["--root", root_option]
    return shlex.join([*argv, flag, value])


def fixed_name(path: str, tag: str = "fixed") -> str:
    """`model.pth` -> `model.fixed.pth`, `ckpt.pth.tar` -> `ckpt.fixed.pth.tar`; a folder
    (sharded, Hugging Face) -> `folder.fixed.safetensors`."""
    folder, name = os.path.split(path.rstrip(os.sep))
    if os.path.isdir(path):
        return os.path.join(folder, f"{name}.{tag}.safetensors")
    stem, ext = os.path.splitext(name)
    inner, inner_ext = os.path.splitext(stem)
    if inner and inner_ext in (".pth", ".pt") and ext in (".tar", ".gz"):
        stem, ext = inner, inner_ext + ext
    return os.path.join(folder, f"{stem or name}.{tag}{ext or '.pth'}")


def _finite(checkpoint: Checkpoint, root: str | None, report: CheckReport) -> None:
    from ckpttool.ops.inspect.stats import non_finite

    for named in find_weights(checkpoint.root, root).tensors:
        nan, inf = non_finite(named.tensor, named.key)
        if nan or inf:
            report.add("finite", ERROR, f"{nan} NaN and {inf} Inf values", named.key)


def _cpu_only(checkpoint: Checkpoint, report: CheckReport) -> None:
    devices = Counter(t.tensor.device for t in all_tensors(checkpoint.root) if isinstance(t.tensor, TensorRef))
    for device, count in devices.items():
        if device != "cpu":
            command = shlex.join(["ckpttool", "remap", checkpoint.path, "OUT", "--device", "cpu"])
            remedy = Remedy("to restore every tensor to cpu, write a copy (OUT):", [command])
            report.add("cpu-only", ERROR, f"{count} tensors restore to {device}; fix: {command}", remedy=remedy)
