"""SARIF 2.1.0 for code-scanning dashboards (GitHub code scanning and others).

One result per finding, each under a stable rule id, located at the file it is about.
Rule ids never change meaning; new kinds of finding get new ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from ckpttool import __version__

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

Level = Literal["error", "warning", "note"]
RuleId = Literal["CKPT001", "CKPT002", "CKPT003", "CKPT004", "CKPT005", "CKPT006", "CKPT101", "CKPT102"]


@dataclass(frozen=True)
class Rule:
    id: RuleId
    name: str
    text: str
    level: Level


RULES: tuple[Rule, ...] = (
    Rule("CKPT001", "dangerous-global", "The pickle names a known code-execution gadget", "error"),
    Rule(
        "CKPT002",
        "dangerous-construct",
        "A pickle construct only an attack writes, a parser differential, or a scan stopped by an error or limit",
        "error",
    ),
    Rule("CKPT003", "unknown-call", "The pickle calls a callable that is neither vetted nor a known gadget", "error"),
    Rule(
        "CKPT004", "needs-allowlist", "A global off torch's weights_only allowlist that runs no unvetted code", "note"
    ),
    Rule("CKPT005", "weights-only-refusal", "torch.load(weights_only=True) refuses the file", "note"),
    Rule("CKPT006", "unreadable", "The file cannot be read as a checkpoint", "error"),
    Rule("CKPT101", "check-error", "A check (integrity, safety, keys, values, devices) failed", "error"),
    Rule("CKPT102", "check-warning", "A check raised a warning", "warning"),
)
RULE_INDEX = {r.id: i for i, r in enumerate(RULES)}


@dataclass(frozen=True)
class Finding:
    rule: RuleId
    path: str
    message: str
    level: Level | None = None  # the rule's default level when None
    properties: dict[str, str] | None = None


def artifact_uri(path: str) -> str:
    """A relative path stays relative (GitHub resolves it against the repository); an
    absolute one becomes a file: URI."""
    if os.path.isabs(path):
        return Path(path).as_uri()
    return quote(Path(path).as_posix())


def document(findings: Iterable[Finding], rule_ids: Iterable[RuleId] | None = None) -> str:
    wanted = set(rule_ids) if rule_ids is not None else {r.id for r in RULES}
    rules = [r for r in RULES if r.id in wanted]
    index = {r.id: i for i, r in enumerate(rules)}
    run = {
        "tool": {
            "driver": {
                "name": "ckpttool",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(r) for r in rules],
            }
        },
        "results": [_result(f, index) for f in findings],
        "columnKind": "unicodeCodePoints",
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


def _rule(rule: Rule) -> dict[str, object]:
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.text},
        "defaultConfiguration": {"level": rule.level},
    }


def _result(finding: Finding, index: dict[RuleId, int]) -> dict[str, object]:
    rule = RULES[RULE_INDEX[finding.rule]]
    result: dict[str, object] = {
        "ruleId": rule.id,
        "ruleIndex": index[rule.id],
        "level": finding.level or rule.level,
        "message": {"text": finding.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(finding.path)}}}],
    }
    if finding.properties:
        result["properties"] = finding.properties
    return result
