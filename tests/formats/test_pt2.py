"""torch.export's PT2 archives against what `torch.export.load` gives back for the same file.

The archives are written by `torch.export.save` itself: a model with tied weights, a
transposed parameter (a view with its own strides), bfloat16 and int64 tensors, BatchNorm
buffers and a non-persistent buffer (a tensor constant). Hostile variants rewrite the
archive's members with `zipfile`; their payloads are never run.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from support.builders import call_global, shell_touch, whole
from support.hostile import assert_dangerous, assert_not_run

from ckpttool.errors import CkptError
from ckpttool.formats import read_checkpoint

Cli = Callable[..., Result]


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.l = torch.nn.Linear(4, 10, bias=False)
        self.l.weight = self.emb.weight  # tied
        self.bn = torch.nn.BatchNorm1d(10)
        self.h = torch.nn.Linear(10, 3).to(torch.bfloat16)
        self.register_buffer("scale", torch.tensor([2.0]), persistent=False)
        self.t = torch.nn.Parameter(torch.randn(5, 3).t())  # strides (1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.l(self.emb(x)).mean(1)) * self.scale
        return self.h(y.to(torch.bfloat16)).float() + self.t.sum()


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on tied weights
        program = torch.export.export(_Model().eval(), (torch.randint(0, 10, (2, 3)),))
        torch.export.save(program, path)
    return path


def _loaded(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(path)


def _inspect(cli: Cli, path: Path) -> dict[str, Any]:
    result = cli("inspect", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_tensors_are_the_views_torch_export_load_builds(cli: Cli, pt2: Path) -> None:
    program = _loaded(pt2)
    report = _inspect(cli, pt2)
    assert report["format"] == "pt2" and report["weights"]["root"] == "state_dict"
    rows = {row["key"]: row for row in report["tensors"]}
    expected = {f"state_dict.{k}": v for k, v in program.state_dict.items()}
    expected |= {f"constants.{k}": v for k, v in program.constants.items()}
    assert set(rows) == set(expected)
    for key, tensor in expected.items():
        row = rows[key]
        assert row["dtype"] == str(tensor.dtype).removeprefix("torch.")
        assert (row["shape"], row["stride"]) == (list(tensor.shape), list(tensor.stride()))
        assert row["storage_offset"] == tensor.storage_offset()
        assert row["kind"] == ("parameter" if isinstance(tensor, torch.nn.Parameter) else "tensor")
    # views of one storage share it, as torch's tensors share their memory
    sd = program.state_dict
    assert sd["l.weight"].untyped_storage().data_ptr() == sd["emb.weight"].untyped_storage().data_ptr()
    assert rows["state_dict.l.weight"]["storage"] == rows["state_dict.emb.weight"]["storage"]
    assert report["weights"]["counts"]["tied"] == 1


def test_convert_writes_the_values_torch_export_load_reads(cli: Cli, pt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = cli("convert", pt2, out)
    assert result.exit_code == 0, result.stderr
    written, state = load_file(out), _loaded(pt2).state_dict
    assert sorted(written) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(written[key], tensor.detach()), key
    assert cli("diff", pt2, out).exit_code == 0


def _rewritten(source: Path, target: Path, change: Callable[[str, bytes], bytes], extra: dict[str, bytes]) -> Path:
    """The archive with each member passed through `change(name, data)`, and `extra` added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        root = old.namelist()[0].split("/")[0]
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info.filename)))
        for name, data in extra.items():
            new.writestr(f"{root}/{name}", data)
    return target


def _config_change(edit: Callable[[dict[str, Any]], None]) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("model_weights_config.json"):
            return data
        document = json.loads(data)
        edit(document["config"])
        return json.dumps(document).encode()

    return change


def test_a_pickled_payload_is_refused_for_reading_and_dangerous_to_scan(
    cli: Cli, pt2: Path, tmp_path: Path, marker: Path
) -> None:
    """torch.export.load unpickles `use_pickle` payloads with weights_only=False: the archive
    is not read, and scan finds the pickle whatever the member is called."""

    def pickled(config: dict[str, Any]) -> None:
        config["evil"] = {"path_name": "weight_99", "is_param": False, "use_pickle": True, "tensor_meta": None}

    payload = whole(call_global("os", "system", shell_touch(marker)))
    path = _rewritten(pt2, tmp_path / "evil.pt2", _config_change(pickled), {"data/weights/weight_99": payload})
    result = cli("inspect", path)
    assert result.exit_code == 2 and "'evil' is pickled" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_dangerous(path, "os.system")
    assert_not_run(marker)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["t"]["tensor_meta"].update(dtype=99), "unknown dtype 99"),
        (lambda c: c["t"]["tensor_meta"]["sizes"].append({"as_expr": "s0"}), "not an integer"),
        (lambda c: c["t"]["tensor_meta"].update(storage_offset={"as_int": 10**6}), "reaches byte"),
        (lambda c: c["t"].update(path_name="missing"), "no record"),
        (lambda c: c["t"]["tensor_meta"].update(device=[1]), "has device"),
    ],
)
def test_a_damaged_config_is_one_error_line(
    cli: Cli, pt2: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = _rewritten(pt2, tmp_path / "bad.pt2", _config_change(edit), {})
    for command in (("inspect",), ("convert", tmp_path / "out.safetensors")):
        result = cli(command[0], path, *command[1:])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def _scan(cli: Cli, path: Path) -> tuple[int, dict[str, Any]]:
    result = cli("scan", path, "--format", "json")
    report: dict[str, Any] = json.loads(result.stdout)["files"][0]
    return result.exit_code, report


def test_scan_reads_the_sample_inputs_and_leaves_raw_weights_out(cli: Cli, pt2: Path) -> None:
    code, report = _scan(cli, pt2)
    assert (code, report["format"], report["verdict"]) == (0, "pt2", "safe")
    assert report["pickles"] == 1  # the sample inputs' torch.save archive
    assert report["weights_only"]["result"] == "not-applicable"


def test_raw_weights_that_look_like_code_are_no_finding(cli: Cli, tmp_path: Path) -> None:
    """A weight's bytes are whatever its values are: one opening with ELF's magic, or with a
    pickle opcode, is not scanned as what it looks like (torch.export.load never runs it)."""
    module = torch.nn.Module()
    elf = torch.frombuffer(bytearray(b"\x7fELF" + b"\x00" * 12), dtype=torch.float32).clone()
    opcode = torch.frombuffer(bytearray(b"cos\nsystem\n(V\ntR."[:16]), dtype=torch.float32).clone()
    module.a, module.b = torch.nn.Parameter(elf), torch.nn.Parameter(opcode)
    module.forward = lambda x: x + module.a.sum() + module.b.sum()  # type: ignore[method-assign]
    path = tmp_path / "looks.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, (torch.zeros(()),)), path)
    code, report = _scan(cli, path)
    assert (code, report["verdict"], report["problems"]) == (0, "safe", [])


def test_an_object_constant_is_unpickled_whatever_its_config_says(
    cli: Cli, pt2: Path, tmp_path: Path, marker: Path
) -> None:
    """torch.export.load unpickles `opaque_obj_*` constants with pickle.loads even when the
    config calls them raw: they are neither read as tensors nor left out of the scan."""

    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("model_constants_config.json"):
            return data
        document = json.loads(data)
        document["config"]["evil"] = {
            "path_name": "opaque_obj_0",
            "is_param": False,
            "use_pickle": False,
            "tensor_meta": json.loads(data)["config"]["scale"]["tensor_meta"],
        }
        return json.dumps(document).encode()

    payload = whole(call_global("os", "system", shell_touch(marker)))
    path = _rewritten(pt2, tmp_path / "opaque.pt2", change, {"data/constants/opaque_obj_0": payload})
    result = cli("inspect", path)
    assert result.exit_code == 2 and "'evil' is pickled" in result.stderr
    assert_dangerous(path, "os.system")
    assert_not_run(marker)


def test_a_compiled_model_in_the_archive_is_dangerous(cli: Cli, pt2: Path, tmp_path: Path) -> None:
    """An AOTInductor package's shared library: torch._inductor.aoti_load_package loads it
    and runs its code."""
    library = b"\x7fELF\x02\x01\x01" + b"\x00" * 57
    path = _rewritten(pt2, tmp_path / "aoti.pt2", lambda name, data: data, {"data/aotinductor/model/m.so": library})
    code, report = _scan(cli, path)
    assert (code, report["verdict"]) == (1, "dangerous")
    assert any("m.so: an ELF executable or shared library" in p for p in report["problems"])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = st.sampled_from(
    ["dtype", "sizes", "strides", "storage_offset", "device", "layout", "requires_grad"]  # of tensor_meta
    + ["/path_name", "/use_pickle", "/is_param", "/tensor_meta", "/"]  # of the entry, or the entry itself
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=st.sampled_from(["t", "emb.weight", "bn.num_batches_tracked"]), field=_FIELDS, value=_JSON)
def test_any_value_in_a_config_is_read_or_refused_in_one_line(
    pt2: Path, tmp_path: Path, entry: str, field: str, value: Any
) -> None:
    """Whatever a config's field holds, reading the archive gives a checkpoint or a
    CkptError naming the file: never another exception."""

    def edit(config: dict[str, Any]) -> None:
        if field == "/":
            config[entry] = value
        elif field.startswith("/"):
            config[entry][field[1:]] = value
        else:
            config[entry]["tensor_meta"][field] = value

    path = _rewritten(pt2, tmp_path / "fuzzed.pt2", _config_change(edit), {})
    try:
        read_checkpoint(str(path))
    except CkptError as exc:
        assert str(path) in str(exc)


_EXPORT_LOAD = "import sys, torch\ntry:\n    torch.export.load(sys.argv[1])\nexcept Exception:\n    pass\n"


def _export_load_runs_it(path: Path, marker: Path) -> bool:
    """Whether `torch.export.load` of the archive, in a child process, creates the marker
    (removed again, so that ckpttool's own runs can be checked after it)."""
    subprocess.run([sys.executable, "-c", _EXPORT_LOAD, str(path)], check=False, timeout=300, capture_output=True)
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


def _raw_bytes_entry(path_name: str, size: int) -> dict[str, Any]:
    meta = {
        "dtype": 1,  # uint8: any record is a whole number of them
        "sizes": [{"as_int": size}],
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "layout": 7,
    }
    return {"path_name": path_name, "is_param": False, "use_pickle": False, "tensor_meta": meta}


@pytest.mark.parametrize(
    ("raw_name", "pickled_name", "record", "extra"),
    [
        # a pickled payload naming a raw weight's record in other letters: torch's reader
        # finds the one record either way, and unpickles it
        ("weight_99", "WEIGHT_99", "weight_99", {}),
        # the legacy `data/weights/<model>.pt`, which torch.export.load unpickles in place of
        # the model's weights config, named by that config as a raw weight
        ("model.pt", None, "model.pt", {}),
        # a `data.pkl` beside the configs: the archive is no torch checkpoint whose `data/`
        # holds storages only
        (None, "weight_99", "weight_99", {"data.pkl": pickle.dumps({}, protocol=2)}),
    ],
)
def test_a_record_torch_export_load_unpickles_is_scanned_whatever_names_it_raw(
    cli: Cli,
    pt2: Path,
    tmp_path: Path,
    marker: Path,
    raw_name: str | None,
    pickled_name: str | None,
    record: str,
    extra: dict[str, bytes],
) -> None:
    payload = whole(call_global("os", "system", shell_touch(marker)))

    def named(config: dict[str, Any]) -> None:
        if raw_name is not None:
            config["raw"] = _raw_bytes_entry(raw_name, len(payload))
        if pickled_name is not None:
            config["evil"] = {"path_name": pickled_name, "is_param": False, "use_pickle": True, "tensor_meta": None}

    members = {f"data/weights/{record}": payload, **extra}
    path = _rewritten(pt2, tmp_path / "named.pt2", _config_change(named), members)
    assert _export_load_runs_it(path, marker)  # ground truth: torch.export.load runs the payload
    code, report = _scan(cli, path)
    assert (code, report["verdict"]) == (1, "dangerous"), report
    assert_not_run(marker)


def test_a_raw_weight_named_in_other_letters_is_its_record(cli: Cli, pt2: Path, tmp_path: Path) -> None:
    """torch's reader finds `WEIGHT_0` as `weight_0`: the view reads that record's bytes."""

    def upper(config: dict[str, Any]) -> None:
        for payload in config.values():
            payload["path_name"] = payload["path_name"].upper()

    path = _rewritten(pt2, tmp_path / "upper.pt2", _config_change(upper), {})
    program = _loaded(path)
    rows = {row["key"]: row for row in _inspect(cli, path)["tensors"]}
    assert {f"state_dict.{k}" for k in program.state_dict} <= set(rows)
    out = tmp_path / "upper.safetensors"
    assert cli("convert", path, out).exit_code == 0
    written = load_file(out)
    for key, tensor in program.state_dict.items():
        assert torch.equal(written[key], tensor.detach()), key
    code, report = _scan(cli, path)
    assert (code, report["verdict"]) == (0, "safe")
