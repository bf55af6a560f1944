"""Comparing checkpoints: diff, the CI checks, keys against a model or a reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.ops.compare.checking import CheckOptions, CheckReport, Finding, check, check_paths, fixed_name
    from ckpttool.ops.compare.diffing import DiffOptions, DiffReport, diff
    from ckpttool.ops.compare.entries import same_entry
    from ckpttool.ops.compare.equivalence import equivalent
    from ckpttool.ops.compare.modelspec import build_model, expected_state, parameter_names, parse_model_args
    from ckpttool.ops.compare.values import Tolerance

_EXPORTS = {
    "DiffOptions": ".diffing",
    "DiffReport": ".diffing",
    "diff": ".diffing",
    "Tolerance": ".values",
    "CheckOptions": ".checking",
    "CheckReport": ".checking",
    "Finding": ".checking",
    "check": ".checking",
    "check_paths": ".checking",
    "fixed_name": ".checking",
    "equivalent": ".equivalence",
    "same_entry": ".entries",
    "build_model": ".modelspec",
    "expected_state": ".modelspec",
    "parameter_names": ".modelspec",
    "parse_model_args": ".modelspec",
}
__all__ = [
    "CheckOptions",
    "CheckReport",
    "DiffOptions",
    "DiffReport",
    "Finding",
    "Tolerance",
    "build_model",
    "check",
    "check_paths",
    "diff",
    "equivalent",
    "expected_state",
    "fixed_name",
    "parameter_names",
    "parse_model_args",
    "same_entry",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
