"""`scan`/`check --format sarif`, `--allow` misuse, and `inspect` on a dangerous file.

The SARIF output is validated against a subset of the SARIF 2.1.0 JSON schema written
here by hand from the standard (OASIS SARIF v2.1.0, sections 3.13-3.49): the properties
ckpttool emits, with the types, required members and enumerations the schema gives them.
`validate` implements the JSON-schema keywords that subset uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support.cli import cli_json
from support.paths import COMMITTED_DIR

Cli = Callable[..., Result]
LEVELS = ["none", "note", "warning", "error"]
MESSAGE = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
SARIF_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string", "pattern": r"^https?://"},
        "version": {"enum": ["2.1.0"]},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tool"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "semanticVersion": {"type": "string"},
                                    "rules": {
                                        "type": "array",
                                        "uniqueItems": True,
                                        "items": {
                                            "type": "object",
                                            "required": ["id"],
                                            "properties": {
                                                "id": {"type": "string"},
                                                "name": {"type": "string"},
                                                "shortDescription": MESSAGE,
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {"level": {"enum": LEVELS}},
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "columnKind": {"enum": ["utf16CodeUnits", "unicodeCodePoints"]},
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["message"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": -1},
                                "level": {"enum": LEVELS},
                                "message": MESSAGE,
                                "properties": {"type": "object"},
                                "locations": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "properties": {
                                                    "artifactLocation": {
                                                        "type": "object",
                                                        "properties": {"uri": {"type": "string"}},
                                                    }
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_TYPES = {"object": dict, "array": list, "string": str, "integer": int}


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of `value` against `schema` (type, required, properties, items, enum,
    pattern, minimum, uniqueItems); an empty list when it conforms."""
    errors: list[str] = []
    expected = schema.get("type")
    if expected and not (isinstance(value, _TYPES[expected]) and not isinstance(value, bool)):
        return [f"{where}: not a {expected}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: {key} missing" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += validate(value[key], sub, f"{where}.{key}")
    if isinstance(value, list):
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            errors.append(f"{where}: items not unique")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{where}[{i}]")
    return errors


def test_the_validator_rejects_what_the_schema_rejects() -> None:
    assert validate({"version": "2.1.0", "runs": []}, SARIF_SUBSET) == []
    assert validate({"version": "2.0.0", "runs": []}, SARIF_SUBSET)
    assert validate({"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]}, SARIF_SUBSET)
    bad_level = {"tool": {"driver": {"name": "x"}}, "results": [{"message": {"text": "m"}, "level": "fatal"}]}
    assert validate({"version": "2.1.0", "runs": [bad_level]}, SARIF_SUBSET)


def sarif_of(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    assert validate(document, SARIF_SUBSET) == []
    return document


def test_scan_sarif_has_one_result_per_finding(cli: Cli, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.pkl"
    # os.system('true') and an unknown call, one pickle after another.
    hostile.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.\x80\x02cmylib\nStrategy\nK\x01\x85R.")
    paths = [hostile, COMMITTED_DIR / "cnn_state_dict.pth", COMMITTED_DIR / "cnn_whole_model.pth"]
    result = cli("scan", *paths, "--format", "sarif")
    assert result.exit_code == 1
    (run,) = sarif_of(result)["runs"]
    rules = run["tool"]["driver"]["rules"]
    reports = cli_json(cli("scan", *paths, "--format", "json"))["files"]
    findings = sum(
        sum(g["verdict"] != "safe" for g in r["globals"])
        + len(r["problems"])
        + (r["weights_only"]["result"] == "refused")
        for r in reports
    )
    assert len(run["results"]) == findings
    for item in run["results"]:
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
        assert item["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("file://")
    by_rule = {(r["ruleId"], r["properties"].get("global")) for r in run["results"] if "properties" in r}
    assert ("CKPT001", "os.system") in by_rule and ("CKPT003", "mylib.Strategy") in by_rule
    assert {r["ruleId"] for r in run["results"] if hostile.as_uri() not in r["locations"][0]["physicalLocation"]
            ["artifactLocation"]["uri"]} <= {"CKPT004"}  # fmt: skip


def test_rule_ids_are_stable(cli: Cli) -> None:
    result = cli("scan", COMMITTED_DIR / "cnn_state_dict.pth", "--format", "sarif")
    assert result.exit_code == 0
    (run,) = sarif_of(result)["runs"]
    assert run["results"] == []
    assert [(r["id"], r["name"]) for r in run["tool"]["driver"]["rules"]] == [
        ("CKPT001", "dangerous-global"),
        ("CKPT002", "dangerous-construct"),
        ("CKPT003", "unknown-call"),
        ("CKPT004", "needs-allowlist"),
        ("CKPT005", "weights-only-refusal"),
        ("CKPT006", "unreadable"),
        ("CKPT101", "check-error"),
        ("CKPT102", "check-warning"),
    ]


def test_relative_paths_stay_relative(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my models").mkdir()
    (tmp_path / "my models" / "a.pkl").write_bytes(b"\x80\x02cos\nsystem\n.")
    monkeypatch.chdir(tmp_path)
    (run,) = sarif_of(cli("scan", "my models/a.pkl", "--format", "sarif"))["runs"]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]} == {
        "my%20models/a.pkl"
    }


def test_an_unreadable_file_is_a_result_too(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = cli("scan", missing, "--format", "sarif")
    assert result.exit_code == 2
    (run,) = sarif_of(result)["runs"]
    assert [r["ruleId"] for r in run["results"]] == ["CKPT006"]


def test_check_sarif_has_one_result_per_finding(cli: Cli) -> None:
    path = COMMITTED_DIR / "cnn_whole_model.pth"
    result = cli("check", path, "--format", "sarif")
    assert result.exit_code == 0
    (run,) = sarif_of(result)["runs"]
    (checked,) = cli_json(cli("check", path, "--format", "json"))["files"]
    assert len(run["results"]) == len(checked["findings"]) > 0
    assert [r["properties"]["check"] for r in run["results"]] == [f["check"] for f in checked["findings"]]


@pytest.mark.parametrize("value", ["os", "not a name", "a..b", "1a.b"])
def test_allow_takes_module_dot_name(cli: Cli, value: str) -> None:
    result = cli("scan", COMMITTED_DIR / "cnn_state_dict.pth", "--allow", value)
    assert result.exit_code == 2
    assert result.stderr.startswith("ckpttool: error: --allow: ") and result.stderr.count("\n") == 1


def test_a_broken_pyproject_is_one_error_line(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ckpttool]\nallow = 'x.y'\n")
    monkeypatch.chdir(tmp_path)
    result = cli("scan", COMMITTED_DIR / "cnn_state_dict.pth")
    assert result.exit_code == 2
    assert "allow must be a list of strings" in result.stderr and result.stderr.count("\n") == 1


def test_inspect_says_a_file_is_dangerous(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "payload.pkl"
    path.write_bytes(b"\x80\x02}X\x01\x00\x00\x00acos\nsystem\nX\x04\x00\x00\x00true\x85Rs.")
    table = cli("inspect", path)
    assert re.search(
        r"^note:\s+DANGEROUS: scan calls this file dangerous \(dangerous globals os\.system\)", table.stdout, re.M
    )
    notes = cli_json(cli("inspect", path, "--format", "json"))["notes"]
    assert any(n.startswith("DANGEROUS:") and "ckpttool scan" in n for n in notes)
    clean = cli_json(cli("inspect", COMMITTED_DIR / "cnn_state_dict.pth", "--format", "json"))["notes"]
    assert not any("DANGEROUS" in n for n in clean)
