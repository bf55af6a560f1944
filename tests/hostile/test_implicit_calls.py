"""The calls an unpickler makes without a REDUCE: methods of the objects it built.

Each technique is built opcode by opcode, shown to run its payload under the naive
loader (`pickle.loads` in a child process, with a fake `ifconfig` on PATH for the gadgets
that run one), then shown to be `dangerous` for `scan` and `check`, and harmless for every
command (marker file absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile.builders import Op, Raw, call_global, global_ref, shell_touch, text, torch_zip, value, whole
from hostile.support import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_no_crash,
    assert_not_run,
    global_entry,
    run_cli,
)

Technique = Callable[[Path], bytes]
_LOAD = "import pickle, sys\ntry:\n    pickle.loads(open(sys.argv[1], 'rb').read())\nexcept Exception:\n    pass\n"


def fake_ifconfig(folder: Path, marker: Path) -> dict[str, str]:
    """An environment whose PATH finds an `ifconfig` that creates the marker (what
    `uuid._ifconfig_getnode` runs)."""
    folder.mkdir(exist_ok=True)
    program = folder / "ifconfig"
    program.write_text(f"#!/bin/sh\n{shell_touch(marker)}\n")
    program.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def naive_load_runs_it(path: Path, marker: Path) -> bool:
    """Whether `pickle.loads` of the file, in a child process, creates the marker."""
    env = fake_ifconfig(path.parent / "bin", marker)
    subprocess.run([sys.executable, "-c", _LOAD, str(path)], env=env, check=False, timeout=60, capture_output=True)
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


def new_object(module: str, name: str, state: bytes) -> bytes:
    """cls.__new__(cls) then BUILD: an instance whose attributes the pickle chooses."""
    return global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD


def attributes(**encoded: bytes) -> bytes:
    """A dict of attribute names to already-encoded values (BUILD's state)."""
    return Op.EMPTY_DICT + Op.MARK + b"".join(text(k) + v for k, v in encoded.items()) + Op.SETITEMS


def namespace(**encoded: bytes) -> bytes:
    """A types.SimpleNamespace whose attributes are the given encoded values."""
    return new_object("types", "SimpleNamespace", attributes(**encoded))


SYSTEM = global_ref("platform", "os.system")  # protocol 4 resolves the dotted name
CALL = global_ref("_aix_support", "subprocess.call")  # subprocess.call(argv)
IFCONFIG = global_ref("uuid", "_ifconfig_getnode")  # runs `ifconfig` from PATH, no arguments


def append_on_a_namespace(marker: Path) -> bytes:
    """APPEND looks `append` up on the object: a namespace whose append runs a command."""
    return whole(namespace(append=SYSTEM) + value(shell_touch(marker)) + Op.APPEND, protocol=4)


def appends_on_a_namespace(marker: Path) -> bytes:
    """APPENDS calls `extend` with the list of items when the object has one."""
    body = namespace(extend=CALL) + Op.MARK + value("touch") + value(str(marker)) + Op.APPENDS
    return whole(body, protocol=4)


def setitem_on_headers(marker: Path) -> bytes:
    """SETITEM calls wsgiref.headers.Headers.__setitem__, which calls the
    `_convert_string_type` BUILD replaced with a command runner."""
    state = attributes(_headers=value([]), _convert_string_type=SYSTEM)
    headers = new_object("wsgiref.headers", "Headers", state)
    return whole(headers + value(shell_touch(marker)) + value("x") + Op.SETITEM, protocol=4)


def ordered_dict_of_a_crafted_object(marker: Path) -> bytes:
    """OrderedDict(x) calls x.keys(): torch allowlists OrderedDict, not what it iterates."""
    return whole(call_global("collections", "OrderedDict", Raw(namespace(keys=IFCONFIG))), protocol=4)


def del_of_a_popped_wave_writer(marker: Path) -> bytes:
    """wave.Wave_write.__del__ closes the file it believes it opened: a namespace whose
    close runs a command, once the object is dropped."""
    state = attributes(_file=value(None), _i_opened_the_file=namespace(close=IFCONFIG))
    return whole(new_object("wave", "Wave_write", state) + Op.POP + value(None), protocol=4)


def generic_alias_forwards_setattr(marker: Path) -> bytes:
    """typing._GenericAlias forwards setattr to its __origin__: slot state replaces
    collections.OrderedDict with a command runner for the rest of the load."""
    slots = attributes(__origin__=global_ref("typing", "collections"), OrderedDict=SYSTEM)
    alias = global_ref("typing", "_GenericAlias") + Op.EMPTY_TUPLE + Op.NEWOBJ + Op.NONE + slots + Op.TUPLE2 + Op.BUILD
    then = call_global("collections", "OrderedDict", shell_touch(marker))
    return whole(alias + Op.POP + then, protocol=4)


TECHNIQUES: dict[str, tuple[Technique, str, str]] = {
    # name: (builder, the class whose methods the unpickler calls, the callable they reach)
    "append": (append_on_a_namespace, "types.SimpleNamespace", "platform.os.system"),
    "appends": (appends_on_a_namespace, "types.SimpleNamespace", "_aix_support.subprocess.call"),
    "setitem": (setitem_on_headers, "wsgiref.headers.Headers", "platform.os.system"),
    "ordered_dict_iterates": (ordered_dict_of_a_crafted_object, "types.SimpleNamespace", "uuid._ifconfig_getnode"),
    "del_of_popped_object": (del_of_a_popped_wave_writer, "wave.Wave_write", "uuid._ifconfig_getnode"),
    "generic_alias_slot_state": (generic_alias_forwards_setattr, "typing._GenericAlias", "platform.os.system"),
}


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_an_implicit_call_is_judged_and_never_runs(write: FileWriter, marker: Path, name: str) -> None:
    build, target, reached = TECHNIQUES[name]
    raw = write(f"{name}.pkl", build(marker))
    assert naive_load_runs_it(raw, marker), "the technique must work on the naive loader"
    for path in (raw, write(f"{name}.pt", torch_zip(build(marker)))):
        report = assert_dangerous(path, reached)
        assert global_entry(report, target)["verdict"] in ("unknown-call", "dangerous")
        assert report["allowlist"] is None
        assert run_cli("check", path).exit_code == 1
        assert_inspect_harmless(path)
    assert_not_run(marker)


# -- names reached through another module's attribute ----------------------------------------

THROUGH_AN_ATTRIBUTE = {
    "platform.os.system": lambda marker: (global_ref("platform", "os.system"), (shell_touch(marker),)),
    "_aix_support.subprocess.call": lambda marker: (
        global_ref("_aix_support", "subprocess.call"),
        (["touch", str(marker)],),
    ),
}


@pytest.mark.parametrize("qualname", sorted(THROUGH_AN_ATTRIBUTE))
def test_a_name_through_a_module_attribute_is_what_it_reaches(write: FileWriter, marker: Path, qualname: str) -> None:
    func, args = THROUGH_AN_ATTRIBUTE[qualname](marker)
    path = write("through.pkl", whole(func + value(args) + Op.REDUCE, protocol=4))
    assert naive_load_runs_it(path, marker)
    report = assert_dangerous(path, qualname)
    assert report["allowlist"] is None
    assert_inspect_harmless(path)
    assert_not_run(marker)


@pytest.mark.parametrize("qualname", ["typing.types.CodeType", "typing.types.FunctionType"])
def test_code_types_through_typing_get_no_allowlist_line(write: FileWriter, qualname: str) -> None:
    module, _, rest = qualname.partition(".")
    path = write("code.pt", torch_zip(whole(global_ref(module, rest), protocol=4)))
    report = assert_dangerous(path, qualname)
    assert report["allowlist"] is None
    assert "--allow" not in scan_text(path)


def scan_text(path: Path) -> str:
    outcome = run_cli("scan", path)
    assert_no_crash(outcome)
    return outcome.stdout


# -- benign values that used to be false alarms ---------------------------------------------------


def benign_values() -> dict[str, object]:
    import datetime
    import pathlib

    utc = datetime.UTC
    return {
        "saved_at": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=utc),
        "local": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "X")),
        "day": datetime.date(2024, 5, 1),
        "at": datetime.time(7, 45),
        "took": datetime.timedelta(seconds=90.5),
        "paths": [pathlib.PurePosixPath("runs/exp1"), pathlib.PureWindowsPath("C:/runs"), pathlib.PosixPath("out")],
    }


def test_datetime_and_path_values_need_only_the_printed_allowlist(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "config.pt"
    torch.save(benign_values(), path)
    report = scan_needing_allowlist(path)
    loaded = load_with_allowlist(path, report["allowlist"], report["imports"])
    assert loaded == repr(benign_values())


def test_len_of_plain_data_needs_only_the_printed_allowlist(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "len.pt"
    path.write_bytes(torch_zip(whole(call_global("builtins", "len", [1, 2, 3]))))
    report = scan_needing_allowlist(path)
    assert load_with_allowlist(path, report["allowlist"], report["imports"]) == "3"


_WEIGHTS_ONLY = """import json, sys, torch
path, line, imports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
exec("\\n".join(["import torch", *imports, line]), {})
loaded = torch.load(path, weights_only=True)
print(repr(eval(sys.argv[4], {"loaded": loaded})))
"""


def scan_needing_allowlist(path: Path) -> dict[str, Any]:
    """scan's report of `path`, which passes (exit 0) as needs-allowlist."""
    outcome = run_cli("scan", "--format", "json", path)
    (report,) = outcome.json()["files"]
    assert (outcome.exit_code, report["verdict"]) == (0, "needs-allowlist"), report
    return report


def load_with_allowlist(path: Path, line: str, imports: list[str], shown: str = "loaded") -> str:
    """repr of what torch.load(weights_only=True) returns once the printed line has run
    (a child process, so the allowlist ends with it), or of the expression `shown` of it."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", _WEIGHTS_ONLY, str(path), line, json.dumps(imports), shown],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return done.stdout.strip()


def library_models() -> dict[str, Any]:
    """Whole models whose state holds hooks and activations (what a checkpoint of them holds)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm is deprecated in favour of parametrizations
        return {
            "transformer_relu": torch.nn.TransformerEncoderLayer(8, 2, 16),
            "transformer_gelu": torch.nn.TransformerEncoderLayer(8, 2, 16, activation="gelu"),
            "weight_norm": torch.nn.utils.weight_norm(torch.nn.Linear(2, 2)),
            "spectral_norm": torch.nn.utils.spectral_norm(torch.nn.Linear(2, 2)),
            "recurrent": torch.nn.Sequential(torch.nn.LSTM(2, 2), torch.nn.GRU(2, 2)),
            "attention": torch.nn.MultiheadAttention(8, 2),
        }


@pytest.mark.parametrize(
    "name", ["transformer_relu", "transformer_gelu", "weight_norm", "spectral_norm", "recurrent", "attention"]
)
def test_library_models_need_only_the_printed_allowlist(tmp_path: Path, name: str) -> None:
    torch = pytest.importorskip("torch")
    model = library_models()[name]
    path = tmp_path / f"{name}.pt"
    torch.save(model, path)
    report = scan_needing_allowlist(path)
    assert load_with_allowlist(path, report["allowlist"], report["imports"]) == repr(model)
