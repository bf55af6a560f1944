"""DTensor's classes are vetted in the one form torch.save writes them: the same names used
any other way are flagged.

The hand-built DTensor is first shown to be what torch writes (torch.load reads it back
after `import torch.distributed.tensor`); then each part is swapped for another and
`scan` and `check` must fail (exit 1) naming the class whose form it leaves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import Op, Raw, value
from support.dtensor import (
    DTENSOR,
    MESH,
    built,
    dtensor,
    ground_truth,
    mesh_state,
    shard,
    spec_state,
    state_dict_file,
    wrapper_arguments,
)
from support.hostile import FileWriter, assert_no_crash, global_entry, only_file, run_cli, scan
from support.judging import call, glob, new, text

_SPEC = "torch.distributed.tensor._dtensor_spec.DTensorSpec"
_SHARD = "torch.distributed.tensor.placement_types.Shard"


def test_the_hand_built_dtensor_is_what_torch_writes(write: FileWriter) -> None:
    path = write("dtensor.pt", state_dict_file(dtensor()))
    refused, truth = ground_truth([path])
    assert "torch.distributed.tensor`` must be imported" in refused[str(path)]
    loaded = truth[str(path)]["w"]
    assert loaded["global_shape"] == [4, 3] and loaded["placements"] == ["Shard(dim=0)"]
    assert loaded["shape"] == [2, 3] and loaded["values"] == [0, 1, 2, 3, 4, 5]
    outcome = scan(path)
    assert outcome.exit_code == 0, outcome.stdout
    report = only_file(outcome)
    assert report["verdict"] == "needs-allowlist"
    assert report["allowlist"] == "import torch.distributed.tensor" and report["imports"] == []
    assert run_cli("check", path).exit_code == 0


def _mesh(**changes: object) -> bytes:
    return built(MESH, mesh_state(**changes))


def _spec(mesh: bytes | None = None, **changes: object) -> bytes:
    return built(_SPEC, spec_state(mesh, **changes))


MISUSES: dict[str, tuple[bytes, str]] = {
    # DeviceMesh.__new__ given an argument, and DeviceMesh() called: its __init__ makes process groups
    "mesh-argument": (dtensor(spec=built(_SPEC, spec_state(mesh=built(MESH, mesh_state(), value("cpu"))))), MESH),
    "mesh-called": (dtensor(spec=_spec(mesh=call(MESH, value("cpu"), value([0, 1])))), MESH),
    # __setstate__ iterates the group names and hands each to c10d: strings only
    "mesh-group-object": (
        dtensor(spec=_spec(mesh=_mesh(_dim_group_names=[Raw(built("argparse.Namespace", {}))]))),
        MESH,
    ),
    "mesh-unknown-field": (dtensor(spec=_spec(mesh=_mesh(_pg_registry={}))), MESH),
    # a DTensor around something that is no tensor, built by NEWOBJ, with other slots, or BUILD after
    "local-not-a-tensor": (dtensor(local=value("weights")), DTENSOR),
    "local-an-object": (dtensor(local=built("argparse.Namespace", {})), DTENSOR),
    "dtensor-newobj": (new(DTENSOR), DTENSOR),
    "dtensor-other-slot": (dtensor(slots={"_local_tensor": 1, "_spec": None, "__dict__": {}}), DTENSOR),
    "dtensor-build-after": (dtensor(after=value({"x": 1}) + Op.BUILD), DTENSOR),
    "wrapper-of-another-class": (dtensor(cls="torch.nn.modules.linear.Linear"), DTENSOR),
    # a DTensor allocated without its slots: alone, or made another type (as_subclass runs
    # DTensor's dispatch on it) before its slots are set
    "wrapper-called-alone": (
        glob("torch._utils._rebuild_wrapper_subclass") + value(wrapper_arguments()) + Op.REDUCE,
        DTENSOR,
    ),
    "dtensor-made-a-tensor": (dtensor(new_type="torch.Tensor"), DTENSOR),
    "dtensor-made-a-parameter": (dtensor(new_type="torch.nn.parameter.Parameter"), DTENSOR),
    # spec, placements and meta outside their forms
    "spec-extra-field": (dtensor(spec=_spec(extra=1)), _SPEC),
    "spec-placement-not-one": (dtensor(spec=_spec(placements=(Raw(built("argparse.Namespace", {})),))), _SPEC),
    "shard-dim-object": (dtensor(spec=_spec(placements=(Raw(shard(Raw(built("argparse.Namespace", {})))),))), _SHARD),
    "shard-with-argument": (dtensor(spec=_spec(placements=(Raw(built(_SHARD, {"dim": 0}, value(1))),))), _SHARD),
    "meta-not-a-size": (
        dtensor(
            spec=_spec(
                tensor_meta=Raw(
                    new(
                        "torch.distributed.tensor._dtensor_spec.TensorMeta",
                        value([4, 3]),
                        value((3, 1)),
                        glob("torch.float32"),
                    )
                )
            )
        ),
        "torch.distributed.tensor._dtensor_spec.TensorMeta",
    ),
}


@pytest.mark.parametrize("name", sorted(MISUSES))
def test_a_dtensor_class_used_otherwise_is_an_unknown_call(name: str, write: FileWriter) -> None:
    entry, culprit = MISUSES[name]
    path = write(f"{name}.pt", state_dict_file(entry))
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code == 1, outcome.stdout
    report = only_file(outcome)
    assert report["verdict"] in ("unknown-call", "dangerous")
    assert global_entry(report, culprit)["verdict"] in ("unknown-call", "dangerous"), global_entry(report, culprit)
    assert run_cli("check", path).exit_code == 1


def test_a_gadget_held_in_a_dtensor_is_dangerous(write: FileWriter, marker: Path) -> None:
    slots = {"_local_tensor": glob("posix.system"), "_spec": text(f"touch {marker}")}
    path = write("gadget.pt", state_dict_file(dtensor(slots={k: Raw(v) for k, v in slots.items()})))
    report = only_file(scan(path))
    assert report["verdict"] == "dangerous"
    assert global_entry(report, "posix.system")["verdict"] == "dangerous"
    assert not marker.exists()


_LOAD_AFTER_REMEDY = """
import logging, sys, torch
logging.disable(logging.WARNING)
sys.path.insert(0, sys.argv[2])
import torch.distributed.tensor
from payload import Evil
torch.serialization.add_safe_globals([Evil])
try:
    torch.load(sys.argv[1], weights_only=True)
except Exception as exc:
    print(type(exc).__name__)
"""


def _load_after_remedy(path: Path, package: Path) -> str:
    """torch.load(weights_only=True) in a child, after `import torch.distributed.tensor` and
    `add_safe_globals([payload.Evil])`: what it raises, if anything."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AFTER_REMEDY, str(path), str(package)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_mesh_state_changed_after_its_build_is_dangerous(write: FileWriter, marker: Path, tmp_path: Path) -> None:
    """The mesh's __setstate__ iterates `_dim_group_names` as BUILD gives them: an object of
    the user's own class there has its __iter__ run. A SETITEM after the BUILD puts the
    strings torch writes in its place, in the dict the scan would otherwise read."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "payload.py").write_text(
        "class Evil:\n"
        "    def __iter__(self):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        return iter(['0'])\n"
    )
    mesh = new(MESH) + value(mesh_state(_dim_group_names=Raw(new("payload.Evil")))) + b"q\xc8" + Op.BUILD
    replace = b"h\xc8" + text("_dim_group_names") + value(["0"]) + Op.SETITEM
    path = write("replaced.pt", state_dict_file(dtensor(spec=_spec(mesh=mesh)), x=replace))
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code == 1 and only_file(outcome)["verdict"] == "dangerous", outcome.stdout
    assert run_cli("inspect", path).exit_code in (0, 1)
    assert not marker.exists()
    # ground truth: torch, given the payload's class as the remedy would allow it, runs it
    assert _load_after_remedy(path, package) == ""
    assert marker.exists()


def test_a_dtensor_without_its_slots_is_what_torch_builds(write: FileWriter, tmp_path: Path) -> None:
    """Ground truth for the misuses above that torch loads or refuses: the wrapper alone
    makes a DTensor without a spec; made another type, DTensor's dispatch meets no spec."""
    alone = write("alone.pt", state_dict_file(MISUSES["wrapper-called-alone"][0]))
    other = write("other.pt", state_dict_file(MISUSES["dtensor-made-a-tensor"][0]))
    (tmp_path / "payload.py").write_text("class Evil:\n    pass\n")
    assert _load_after_remedy(alone, tmp_path) == ""
    assert _load_after_remedy(other, tmp_path) == "AttributeError"
