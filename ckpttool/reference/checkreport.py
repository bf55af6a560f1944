"""What `reference check` prints: a table per file and variant, or a JSON document.

The table shows one row per fixture with a column per variant (the file as saved and
each file ckpttool made from it), then every failing check with what differs. JSON
lists every check, failures apart, with the comparison modes and tolerance used.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ckpttool.reference.check import CheckReport, CheckResult
from ckpttool.reference.compare import Mode
from ckpttool.reference.derived import VARIANTS
from ckpttool.render import SCHEMA_VERSION, fit_table, key_values

NOT_MADE = "-"
# What shows a cut table cell in full.
WHOLE = "--format json"
VARIANT_HEADERS = {
    "file": "as saved",
    "safetensors": "safetensors",
    "pth": "pth",
    "remap-cpu": "remap cpu",
}


def check_json(report: CheckReport) -> str:
    payload: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "ok": report.ok,
        "directory": str(report.directory),
        "model": report.manifest.model.name,
        "dataset": report.manifest.dataset.name,
        "device": report.device,
        "comparison": {
            "metrics": asdict(report.metrics_mode),
            "logits": asdict(report.logits_mode),
        },
        "tolerance": asdict(report.tolerance),
        "fingerprint": {
            "recorded": {
                "metrics": report.manifest.evaluation.metrics_fingerprint,
                "logits": report.manifest.evaluation.probe_fingerprint,
            },
            "here": report.fingerprint,
        },
        "checks": [asdict(result) for result in report.results],
        "failures": [asdict(result) for result in report.failures],
        "resume": _resume_json(report),
        "seconds": report.seconds,
    }
    return json.dumps(payload, indent=2)


def _resume_json(report: CheckReport) -> dict[str, object] | None:
    proof = report.resume
    if proof is None:
        return None
    return {
        "identical": proof.identical,
        "epochs": proof.total_epochs,
        "split_epoch": proof.split_epoch,
        "compared": proof.compared,
        "mismatched": proof.mismatched,
    }


def check_table(report: CheckReport, width: int | None = None) -> str:
    """The report as text no wider than `width` (None: no limit); details are wrapped
    or cut with a count of what was cut, never JSON."""
    parts = [
        _overview(report, width),
        _files_table(report, width),
        _run_table(report, width),
    ]
    if report.failures:
        parts.append(_failures_table(report.failures, width))
    return "\n\n".join(part for part in parts if part)


def _overview(report: CheckReport, width: int | None) -> str:
    manifest, failures = report.manifest, report.failures
    total = len(report.results)
    verdict = f"all {total} checks hold" if not failures else f"FAILED: {len(failures)} of {total} checks"
    rows = [
        ("directory", str(report.directory)),
        (
            "model",
            f"{manifest.model.name}  ({manifest.model.constructor}), {manifest.dataset.name}",
        ),
        ("checked on", report.device),
        ("metrics", _mode_text(report.metrics_mode, report)),
        ("logits", _mode_text(report.logits_mode, report)),
        ("result", f"{verdict}  ({report.seconds:.1f} s)"),
    ]
    return key_values(rows, width)


def _mode_text(mode: Mode, report: CheckReport) -> str:
    if mode.exact:
        return f"bit-exact ({mode.reason})"
    tolerance = report.tolerance
    return (
        f"within atol {tolerance.atol:g} + rtol {tolerance.rtol:g}, accuracy within "
        f"{tolerance.accuracy_examples} example ({mode.reason})"
    )


def _files_table(report: CheckReport, width: int | None) -> str:
    files = [record.path for record in report.manifest.files]
    rows = [[name, *(_cell(report.results, name, variant) for variant in VARIANTS)] for name in files]
    headers = ["file", *(VARIANT_HEADERS[variant] for variant in VARIANTS)]
    return fit_table(headers, rows, width, shrink=range(len(headers)), whole=WHOLE)


def _cell(results: list[CheckResult], file: str, variant: str) -> str:
    mine = [result for result in results if result.file == file and result.variant == variant]
    if not mine:
        return NOT_MADE
    failed = [result.check for result in mine if not result.ok]
    if not failed:
        return "ok"
    # The first failing check, and how many more: the failures table has each one.
    more = f" +{len(failed) - 1}" if len(failed) > 1 else ""
    return f"FAIL {failed[0]}{more}"


def _run_table(report: CheckReport, width: int | None) -> str:
    rows = [
        (result.check, "ok" if result.ok else "FAIL", result.detail) for result in report.results if result.file is None
    ]
    return fit_table(["check", "result", "detail"], rows, width, shrink=(), wrap=(2,), whole=WHOLE)


def _failures_table(failures: list[CheckResult], width: int | None) -> str:
    rows = [
        (
            result.file or "",
            VARIANT_HEADERS.get(result.variant, result.variant),
            result.check,
            result.detail,
        )
        for result in failures
    ]
    headers = ["failed: file", "variant", "check", "detail"]
    return fit_table(headers, rows, width, shrink=(0,), wrap=(3,), whole=WHOLE)
