"""Values real checkpoints hold (run ids, config namespaces, torch.__version__, decimals):
`needs-allowlist` under the forms their own pickling writes, and loadable by
`torch.load(weights_only=True)` with the printed line; the same names given a callable or
an object the pickle built stay flagged, and no command runs the payload."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from hostile.builders import Op, Raw, call, call_global, global_ref, shell_touch, text, torch_zip, value, whole
from hostile.support import FileWriter, assert_dangerous, assert_inspect_harmless, assert_not_run, global_entry, run_cli
from hostile.test_implicit_calls import (
    SYSTEM,
    attributes,
    load_with_allowlist,
    naive_load_runs_it,
    scan_needing_allowlist,
)

from ckpttool.pickle import decode
from ckpttool.pickle.judge import judge


def real_values() -> dict[str, Any]:
    import decimal
    import fractions
    import types
    import uuid

    import torch

    return {
        "run_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "safe_id": uuid.UUID(int=7, is_safe=uuid.SafeUUID.safe),
        "safety": uuid.SafeUUID.unsafe,
        "config": types.SimpleNamespace(lr=0.1, name="run", layers=[2, 4]),
        "torch_version": torch.__version__,
        "lr": decimal.Decimal("0.0001"),
        "split": fractions.Fraction(1, 3),
    }


VETTED_NAMES = (
    "uuid.UUID", "uuid.SafeUUID", "types.SimpleNamespace", "torch.torch_version.TorchVersion", "decimal.Decimal",
    "fractions.Fraction",
)  # fmt: skip


def test_real_values_need_only_the_printed_allowlist(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    values = real_values()
    path = tmp_path / "record.pt"
    torch.save(values, path)
    report = scan_needing_allowlist(path)
    for qualname in VETTED_NAMES:
        assert global_entry(report, qualname)["verdict"] == "needs-allowlist"
    assert load_with_allowlist(path, report["allowlist"], report["imports"]) == repr(values)
    assert run_cli("check", path).exit_code == 0


def test_an_in_memory_buffer_needs_only_the_printed_allowlist(tmp_path: Path) -> None:
    """Older TransformerEngine layers kept their extra state as an io.BytesIO: vetted, and
    torch.load(weights_only=True) under the printed line returns the same bytes and position."""
    import io

    torch = pytest.importorskip("torch")
    buffer = io.BytesIO(b"fp8 scaling state")
    buffer.seek(3)
    path = tmp_path / "te.pt"
    torch.save({"layer._extra_state": buffer}, path)
    report = scan_needing_allowlist(path)
    assert global_entry(report, "_io.BytesIO")["verdict"] == "needs-allowlist"
    buffered = "(loaded['layer._extra_state'].getvalue(), loaded['layer._extra_state'].tell())"
    assert load_with_allowlist(path, report["allowlist"], report["imports"], buffered) == repr(
        (b"fp8 scaling state", 3)
    )


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_of_the_real_values_is_vetted(protocol: int) -> None:
    pytest.importorskip("torch")
    judgement = judge([decode(pickle.dumps(real_values(), protocol=protocol))])
    assert judgement.verdict == "needs-allowlist", [(g.qualname, g.reason) for g in judgement.globals]


# -- the same names, given what their forms refuse -----------------------------------------------


def command(marker: Path) -> bytes:
    """platform.os.system("touch MARKER"): what each variant smuggles in."""
    return SYSTEM + value((shell_touch(marker),)) + Op.REDUCE


def namespace_append(marker: Path) -> bytes:
    """SimpleNamespace() as its reduce writes it, whose state sets `append` to a command runner."""
    built = call_global("types", "SimpleNamespace") + attributes(append=SYSTEM) + Op.BUILD
    return whole(built + value(shell_touch(marker)) + Op.APPEND, protocol=4)


def namespace_slot_append(marker: Path) -> bytes:
    """The same through BUILD's slot state (set with setattr)."""
    slots = Op.NONE + attributes(append=SYSTEM) + Op.TUPLE2
    built = call_global("types", "SimpleNamespace") + slots + Op.BUILD
    return whole(built + value(shell_touch(marker)) + Op.APPEND, protocol=4)


def uuid_state_of_a_command(marker: Path) -> bytes:
    state = Op.EMPTY_DICT + Op.MARK + text("int") + value(1) + text("is_safe") + command(marker) + Op.SETITEMS
    return whole(global_ref("uuid", "UUID") + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD, protocol=4)


def version_of_a_command(marker: Path) -> bytes:
    version = global_ref("torch.torch_version", "TorchVersion") + Op.MARK + command(marker) + Op.TUPLE + Op.NEWOBJ
    return whole(version, protocol=4)


def bytesio_state_of_a_command(marker: Path) -> bytes:
    state = Op.MARK + command(marker) + value(0) + Op.NONE + Op.TUPLE
    return whole(global_ref("_io", "BytesIO") + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD, protocol=4)


def called_with_a_command(module: str, name: str) -> Any:
    def build(marker: Path) -> bytes:
        return whole(global_ref(module, name) + Op.MARK + command(marker) + Op.TUPLE + Op.REDUCE, protocol=4)

    return build


VARIANTS: dict[str, tuple[Any, str]] = {
    # name: (builder, the vetted name it abuses)
    "namespace_append": (namespace_append, "types.SimpleNamespace"),
    "namespace_slot_append": (namespace_slot_append, "types.SimpleNamespace"),
    "uuid_state": (uuid_state_of_a_command, "uuid.UUID"),
    "torch_version": (version_of_a_command, "torch.torch_version.TorchVersion"),
    "safe_uuid": (called_with_a_command("uuid", "SafeUUID"), "uuid.SafeUUID"),
    "decimal": (called_with_a_command("decimal", "Decimal"), "decimal.Decimal"),
    "fraction": (called_with_a_command("fractions", "Fraction"), "fractions.Fraction"),
    "bytesio_state": (bytesio_state_of_a_command, "_io.BytesIO"),
    "bytesio_argument": (called_with_a_command("_io", "BytesIO"), "_io.BytesIO"),
}


def assert_flagged_and_never_run(
    write: FileWriter, marker: Path, name: str, build: Any, target: str
) -> list[dict[str, Any]]:
    """The variant runs its payload under the naive loader; raw and in a torch zip, scan
    calls it dangerous with `target` flagged, check exits 1, and no command runs it.
    Returns the two scan reports."""
    raw = write(f"{name}.pkl", build(marker))
    assert naive_load_runs_it(raw, marker), "the variant must run its payload under the naive loader"
    reports = []
    for path in (raw, write(f"{name}.pt", torch_zip(build(marker)))):
        report = assert_dangerous(path, "platform.os.system")
        assert global_entry(report, target)["verdict"] in ("unknown-call", "dangerous"), report
        assert run_cli("check", path).exit_code == 1
        assert_inspect_harmless(path)
        reports.append(report)
    return reports


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_vetted_name_given_a_callable_stays_flagged_and_never_runs(
    write: FileWriter, marker: Path, name: str
) -> None:
    build, target = VARIANTS[name]
    for report in assert_flagged_and_never_run(write, marker, name, build, target):
        assert report["allowlist"] is None
    assert_not_run(marker)


# -- forms: anything but what the real object's pickling writes is an unknown call ----------------


def verdict_of(body: bytes, qualname: str) -> str:
    judgement = judge([decode(whole(body, protocol=4))])
    (found,) = [g for g in judgement.globals if g.qualname == qualname]
    return found.verdict


def new_with_state(module: str, name: str, state: dict[str, Any]) -> bytes:
    return global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + value(state) + Op.BUILD


OBJECT = call_global("mypkg.models", "Net")  # an object the pickle built: its methods are its class's code


@pytest.mark.parametrize(
    ("body", "qualname"),
    [
        (new_with_state("uuid", "UUID", {"int": 1, "is_safe": 2}), "uuid.UUID"),
        (new_with_state("uuid", "UUID", {"int": "1"}), "uuid.UUID"),
        (global_ref("uuid", "UUID") + Op.EMPTY_TUPLE + Op.NEWOBJ + Op.EMPTY_DICT + Op.MARK + text("int")
         + value(1) + text("is_safe") + OBJECT + Op.SETITEMS + Op.BUILD, "uuid.UUID"),
        (global_ref("torch.torch_version", "TorchVersion") + Op.MARK + OBJECT + Op.TUPLE + Op.NEWOBJ,
         "torch.torch_version.TorchVersion"),
        (global_ref("torch.torch_version", "TorchVersion") + value((b"2.1",)) + Op.NEWOBJ,
         "torch.torch_version.TorchVersion"),
        (call_global("types", "SimpleNamespace") + value({1: 2}) + Op.BUILD, "types.SimpleNamespace"),
        (call_global("types", "SimpleNamespace", {"a": 1}), "types.SimpleNamespace"),
        (call_global("uuid", "SafeUUID", 5), "uuid.SafeUUID"),
        (call_global("decimal", "Decimal", "1", None), "decimal.Decimal"),
        (global_ref("decimal", "Decimal") + Op.MARK + OBJECT + Op.TUPLE + Op.REDUCE, "decimal.Decimal"),
        (call_global("fractions", "Fraction", [1, 2]), "fractions.Fraction"),
    ],
)  # fmt: skip
def test_a_vetted_value_outside_its_form_is_an_unknown_call(body: bytes, qualname: str) -> None:
    assert verdict_of(body, qualname) == "unknown-call"


# -- numpy random generators ----------------------------------------------------------------------


def numpy_rngs() -> dict[str, Any]:
    import numpy as np

    return {"generator": np.random.default_rng(3), "legacy": np.random.RandomState(4), "bits": np.random.MT19937(5)}


def test_numpy_random_generators_need_only_the_printed_allowlist(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "rng_state.pt"
    torch.save(numpy_rngs(), path)
    report = scan_needing_allowlist(path)
    drawn = (
        "[loaded['generator'].random(3).tolist(), loaded['legacy'].rand(3).tolist(), "
        "loaded['bits'].random_raw(3).tolist()]"
    )
    fresh = numpy_rngs()  # the same seeds: the loaded generators must continue the same streams
    expected = [
        fresh["generator"].random(3).tolist(),
        fresh["legacy"].rand(3).tolist(),
        fresh["bits"].random_raw(3).tolist(),
    ]
    assert load_with_allowlist(path, report["allowlist"], report["imports"], drawn) == repr(expected)


def rng_ctor_calling_a_command(name: str) -> Any:
    """numpy 1's (name, ctor) form: the helper calls ctor(name), so a command runner given as
    the ctor runs a program called MT19937 (found on PATH)."""

    def build(marker: Path) -> bytes:
        return whole(call(global_ref("numpy.random._pickle", name), "MT19937", Raw(SYSTEM)), protocol=4)

    return build


def bit_generator_state_of_a_command(marker: Path) -> bytes:
    state = {"bit_generator": "MT19937", "state": {"key": Raw(command(marker)), "pos": 0}}
    built = call_global("numpy.random._pickle", "__bit_generator_ctor", "MT19937") + value(state) + Op.BUILD
    return whole(built, protocol=4)


RNG_VARIANTS: dict[str, tuple[Any, str]] = {
    "generator_ctor": (rng_ctor_calling_a_command("__generator_ctor"), "numpy.random._pickle.__generator_ctor"),
    "randomstate_ctor": (rng_ctor_calling_a_command("__randomstate_ctor"), "numpy.random._pickle.__randomstate_ctor"),
    "bit_generator_state": (bit_generator_state_of_a_command, "numpy.random._pickle.__bit_generator_ctor"),
}


@pytest.mark.parametrize("name", sorted(RNG_VARIANTS))
def test_a_numpy_rng_helper_given_a_callable_stays_flagged_and_never_runs(
    write: FileWriter, marker: Path, tmp_path: Path, name: str
) -> None:
    pytest.importorskip("numpy")
    build, target = RNG_VARIANTS[name]
    (tmp_path / "bin").mkdir()
    program = tmp_path / "bin" / "MT19937"  # what os.system("MT19937") finds on the naive loader's PATH
    program.write_text(f"#!/bin/sh\n{shell_touch(marker)}\n")
    program.chmod(0o755)
    raw = write(f"{name}.pkl", build(marker))
    assert naive_load_runs_it(raw, marker), "the variant must run its payload under the naive loader"
    for path in (raw, write(f"{name}.pt", torch_zip(build(marker)))):
        report = assert_dangerous(path, "platform.os.system")
        assert global_entry(report, target)["verdict"] in ("unknown-call", "dangerous"), report
        assert report["allowlist"] is None
        assert run_cli("check", path).exit_code == 1
        assert_inspect_harmless(path)
    assert_not_run(marker)


PCG64 = global_ref("numpy.random._pcg64", "PCG64")


@pytest.mark.parametrize(
    ("body", "qualname"),
    [
        (call(global_ref("numpy.random._pickle", "__bit_generator_ctor"), "Nope"),
         "numpy.random._pickle.__bit_generator_ctor"),
        (call(global_ref("numpy.random._pickle", "__bit_generator_ctor"), Raw(global_ref("mypkg", "Net"))),
         "numpy.random._pickle.__bit_generator_ctor"),
        (call(global_ref("numpy.random._pickle", "__generator_ctor"), "MT19937", Raw(global_ref("mypkg", "make"))),
         "numpy.random._pickle.__generator_ctor"),
        (call(global_ref("numpy.random._pickle", "__randomstate_ctor"), Raw(OBJECT)),
         "numpy.random._pickle.__randomstate_ctor"),
        (call(global_ref("numpy.random._pickle", "__bit_generator_ctor"), Raw(PCG64)) + Op.MARK + value({"a": 1})
         + OBJECT + Op.TUPLE + Op.BUILD, "numpy.random._pickle.__bit_generator_ctor"),
        (call(global_ref("numpy.random._pickle", "__bit_generator_ctor"), Raw(PCG64)) + Op.EMPTY_DICT + Op.MARK
         + text("state") + OBJECT + Op.SETITEMS + Op.BUILD, "numpy.random._pickle.__bit_generator_ctor"),
        (call(global_ref("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"), Raw(PCG64), 1, None),
         "numpy.random.bit_generator.__pyx_unpickle_SeedSequence"),
    ],
)  # fmt: skip
def test_a_numpy_rng_helper_outside_its_form_is_an_unknown_call(body: bytes, qualname: str) -> None:
    assert verdict_of(body, qualname) == "unknown-call"


# -- regexes, Python's RNG and AMP's loss scaler: compared by what they do -------------------------

# What the loaded values hold and do, as an expression over `loaded` (load_with_allowlist's `shown`).
_DESCRIBED = (
    "[loaded['pattern'].pattern, loaded['pattern'].flags, loaded['rng'].random(), loaded['scaler'].get_scale(), "
    "loaded['scaler']._device, dict(loaded['scaler']._per_optimizer_states)]"
)


def stateful_values() -> dict[str, Any]:
    import random
    import re

    import torch

    rng = random.Random(11)
    rng.random()
    return {"pattern": re.compile(r"layer\.(\d+)\.", re.IGNORECASE), "rng": rng, "scaler": torch.amp.GradScaler("cpu")}


def test_regexes_rngs_and_grad_scalers_need_only_the_printed_allowlist(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "trainer_state.pt"
    torch.save(stateful_values(), path)
    report = scan_needing_allowlist(path)
    expected = repr(eval(_DESCRIBED, {"loaded": stateful_values()}))
    assert load_with_allowlist(path, report["allowlist"], report["imports"], _DESCRIBED) == expected


STATEFUL_VARIANTS: dict[str, tuple[Any, str]] = {
    "regex_of_a_command": (called_with_a_command("re", "_compile"), "re._compile"),
    "random_seeded_by_a_command": (called_with_a_command("random", "Random"), "random.Random"),
    "scaler_factory_of_a_command": (
        called_with_a_command("torch.amp.grad_scaler", "_refresh_per_optimizer_state"),
        "torch.amp.grad_scaler._refresh_per_optimizer_state",
    ),
}


@pytest.mark.parametrize("name", sorted(STATEFUL_VARIANTS))
def test_a_stateful_value_given_a_command_stays_flagged_and_never_runs(
    write: FileWriter, marker: Path, name: str
) -> None:
    build, target = STATEFUL_VARIANTS[name]
    assert_flagged_and_never_run(write, marker, name, build, target)
    assert_not_run(marker)


@pytest.mark.parametrize(
    ("body", "qualname"),
    [
        (call_global("random", "Random") + value((3, (1, "2"), None)) + Op.BUILD, "random.Random"),
        (call_global("random", "Random") + Op.MARK + value(3) + value((1,)) + OBJECT + Op.TUPLE + Op.BUILD,
         "random.Random"),
        (call_global("re", "_compile", "a+", "2"), "re._compile"),
        (global_ref("torch.amp.grad_scaler", "GradScaler") + Op.EMPTY_TUPLE + Op.NEWOBJ + OBJECT + Op.BUILD,
         "torch.amp.grad_scaler.GradScaler"),
        (call_global("torch.amp.grad_scaler", "_refresh_per_optimizer_state", 1),
         "torch.amp.grad_scaler._refresh_per_optimizer_state"),
    ],
)  # fmt: skip
def test_a_stateful_value_outside_its_form_is_an_unknown_call(body: bytes, qualname: str) -> None:
    assert verdict_of(body, qualname) == "unknown-call"


_NUMPY1_STATE = {"bit_generator": "MT19937", "state": {"key": [1, 2, 3], "pos": 624}, "has_gauss": 0, "gauss": 0.0}
_CTOR = Raw(global_ref("numpy.random._pickle", "__bit_generator_ctor"))


@pytest.mark.parametrize(
    "body",
    [
        call(global_ref("numpy.random._pickle", "__randomstate_ctor"), "MT19937", _CTOR) + value(_NUMPY1_STATE)
        + Op.BUILD,
        call(global_ref("numpy.random._pickle", "__generator_ctor"), "PCG64", _CTOR)
        + value({"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0})
        + Op.BUILD,
        call(global_ref("numpy.random._pickle", "__bit_generator_ctor"), "SFC64")
        + value({"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 4]}, "has_uint32": 0, "uinteger": 0})
        + Op.BUILD,
    ],
)  # fmt: skip
def test_numpy_1_spellings_of_the_rngs_are_vetted(body: bytes) -> None:
    """numpy 1.x writes a bit generator's name (and its own ctor) where numpy 2 writes the class."""
    judgement = judge([decode(whole(body, protocol=2))])
    assert (judgement.verdict, judgement.problems) == ("needs-allowlist", []), judgement.globals


# -- whole optimizers ------------------------------------------------------------------------------

# torch's weights_only unpickler refuses the optimizer state's defaultdict whatever is allowlisted (as
# the scan says); the full loader shows the state comes back whole.
_OPTIMIZER_STATES = """import json, sys, torch
path, line, imports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
exec("\\n".join(["import torch", *imports, line]), {})
try:
    torch.load(path, weights_only=True)
except Exception as error:
    print("refused:", "defaultdict" in str(error))
print({k: repr(v.state_dict()) for k, v in torch.load(path, weights_only=False).items()})
"""


def stepped_optimizers() -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizers = {
        "sgd": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        "adam": torch.optim.Adam(model.parameters(), lr=1e-3),
        "adamw": torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01),
        "rmsprop": torch.optim.RMSprop(model.parameters()),
    }
    for optimizer in optimizers.values():
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
    return optimizers


def test_whole_optimizers_need_only_the_printed_allowlist(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    torch = pytest.importorskip("torch")
    optimizers = stepped_optimizers()
    path = tmp_path / "optimizers.pt"
    torch.save(optimizers, path)
    report = scan_needing_allowlist(path)
    done = subprocess.run(
        [sys.executable, "-c", _OPTIMIZER_STATES, str(path), report["allowlist"], json.dumps(report["imports"])],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert report["weights_only"]["result"] == "refused"
    expected = {k: repr(v.state_dict()) for k, v in optimizers.items()}
    assert done.stdout.strip() == f"refused: True\n{expected}"


def optimizer_defaults_of_a_command(marker: Path) -> bytes:
    state = Op.EMPTY_DICT + Op.MARK + text("defaults") + command(marker) + text("param_groups") + value([])
    built = global_ref("torch.optim.sgd", "SGD") + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.SETITEMS + Op.BUILD
    return whole(built, protocol=4)


def test_an_optimizer_whose_state_holds_a_command_stays_flagged_and_never_runs(write: FileWriter, marker: Path) -> None:
    raw = write("optimizer.pkl", optimizer_defaults_of_a_command(marker))
    assert naive_load_runs_it(raw, marker), "the variant must run its payload under the naive loader"
    for path in (raw, write("optimizer.pt", torch_zip(optimizer_defaults_of_a_command(marker)))):
        report = assert_dangerous(path, "platform.os.system")
        assert global_entry(report, "torch.optim.sgd.SGD")["verdict"] == "unknown-call", report
        assert run_cli("check", path).exit_code == 1
        assert_inspect_harmless(path)
    assert_not_run(marker)


def optimizer(state: bytes) -> bytes:
    return global_ref("torch.optim.adam", "Adam") + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD


def state_with(**encoded: bytes) -> bytes:
    return Op.EMPTY_DICT + Op.MARK + b"".join(text(k) + v for k, v in encoded.items()) + Op.SETITEMS


@pytest.mark.parametrize(
    "state",
    [
        state_with(defaults=OBJECT, param_groups=value([])),
        state_with(defaults=value({}), param_groups=OBJECT),
        state_with(defaults=value({}), param_groups=Op.EMPTY_LIST + Op.MARK + OBJECT + Op.APPENDS),
        state_with(defaults=value({}), param_groups=value([]), state=OBJECT),
        state_with(defaults=value({}), param_groups=value([]), state=Op.EMPTY_DICT + value(1) + Op.EMPTY_DICT
                   + Op.MARK + text("step") + OBJECT + Op.SETITEMS + Op.SETITEM),
        value([1]),
    ],
)  # fmt: skip
def test_an_optimizer_outside_its_form_is_an_unknown_call(state: bytes) -> None:
    assert verdict_of(optimizer(state), "torch.optim.adam.Adam") == "unknown-call"


def test_an_optimizer_state_as_torch_writes_it_is_vetted() -> None:
    assert verdict_of(optimizer(state_with(defaults=value({"lr": 0.1}), param_groups=value([{"params": [0]}]))),
                      "torch.optim.adam.Adam") == "needs-allowlist"  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        call_global("copyreg", "__newobj_ex__", Raw(global_ref("uuid", "UUID")), (), {}) + Op.EMPTY_DICT + Op.MARK
        + text("int") + value(1) + text("is_safe") + OBJECT + Op.SETITEMS + Op.BUILD,
        global_ref("uuid", "UUID") + value(()) + value({"int": 1}) + Op.NEWOBJ_EX,
        call_global("copyreg", "_reconstructor", Raw(global_ref("torch.torch_version", "TorchVersion")),
                    Raw(global_ref("builtins", "str")), b"2.1"),
    ],
)  # fmt: skip
def test_every_spelling_of_a_vetted_class_has_its_form_checked(body: bytes) -> None:
    """NEWOBJ_EX and copyreg's helpers build the same objects as NEWOBJ: the same forms hold."""
    judgement = judge([decode(whole(body, protocol=4))])
    vetted = [g for g in judgement.globals if g.qualname in ("uuid.UUID", "torch.torch_version.TorchVersion")]
    assert [g.verdict for g in vetted] == ["unknown-call"], [(g.qualname, g.reason) for g in judgement.globals]
