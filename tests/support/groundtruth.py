"""Ground truth for the checkpoint fixtures, for tests to compare ckpttool against.

What torch, safetensors and the models themselves say about each fixture in
``fixtures/files`` (or a folder the generator wrote). Loading here runs the
files' pickles with torch: these are the project's own fixtures, and this is the
reference ckpttool is measured by. Nothing here depends on pytest.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import pickle
import pickletools
import struct
import subprocess
import sys
import types
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import nn

from support.paths import COMMITTED_DIR, FIXTURES_DIR

GENERATOR = FIXTURES_DIR / "generate.py"
TORCH_FORMATS = frozenset({"torch-zip", "torch-legacy", "torch-legacy-tar"})

# Module names under which whole models were pickled (a tutorial script and a
# project package); every class named there lives in tutorial_models.py.
_SCRIPT_MODULE = "__main__"
_PACKAGE_ROOT = "models"


def tutorial_models() -> types.ModuleType:
    """``fixtures/tutorial_models.py``, imported once as the module ``tutorial_models``."""
    module = sys.modules.get("tutorial_models")
    if module is None:
        spec = importlib.util.spec_from_file_location("tutorial_models", FIXTURES_DIR / "tutorial_models.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # Registered before running it: torch reads a class's source through sys.modules.
        sys.modules["tutorial_models"] = module
        spec.loader.exec_module(module)
    return module


def load_fixture_index(directory: Path = COMMITTED_DIR) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((Path(directory) / "index.json").read_text())
    return records


def fixture_record(name: str, directory: Path = COMMITTED_DIR) -> dict[str, Any]:
    for record in load_fixture_index(directory):
        if record["name"] == name:
            return record
    raise KeyError(f"no fixture named {name!r} in {directory}")


def fixture(name: str) -> Path:
    """The committed fixture file or folder called `name` in the fixture index."""
    return fixture_path(fixture_record(name))


def fixture_path(record: Mapping[str, Any], directory: Path = COMMITTED_DIR) -> Path:
    return Path(directory) / str(record["file"])


class _FixtureClassUnpickler(pickle.Unpickler):
    """Resolves ``__main__.X`` and ``models.<anything>.X`` to ``tutorial_models.X``.

    Those are the homes the fixtures' whole models were pickled under, and which
    do not exist where the files are read.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == _SCRIPT_MODULE or module.split(".", 1)[0] == _PACKAGE_ROOT:
            models = tutorial_models()
            if hasattr(models, name):
                return getattr(models, name)
        return super().find_class(module, name)


def _load_with_fixture_classes(file: Any, **kwargs: Any) -> Any:
    return _FixtureClassUnpickler(file, **kwargs).load()


def _remapping_pickle_module() -> types.ModuleType:
    # torch.load wants a module with Unpickler and load; it subclasses the Unpickler.
    module = types.ModuleType("fixture_class_pickle")
    module.Unpickler = _FixtureClassUnpickler  # type: ignore[attr-defined]
    module.load = _load_with_fixture_classes  # type: ignore[attr-defined]
    return module


def torch_load_trusted(path: Path | str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=False)`` with the fixtures' model classes importable."""
    with warnings.catch_warnings():
        # torch's own rebuilders warn: sparse CSR announces its beta status, and the
        # quantized-tensor rebuilder uses deprecated APIs (TypedStorage.device, the
        # quantized constructors). These are torch's notices, not the fixtures' faults.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.* are deprecated")
        return torch.load(  # noqa: TID251 - ground truth for the project's own fixtures
            path,
            map_location=map_location,
            weights_only=False,
            pickle_module=_remapping_pickle_module(),
        )


def weights_at(obj: Any, root: str) -> Any:
    """The object at dotted path ``root`` (``""`` is ``obj``); an nn.Module gives its state_dict.

    Parts index mappings by key, lists and tuples by position (``optimizer_states.0``)
    and anything else by attribute.
    """
    current = obj
    for part in root.split(".") if root else []:
        if isinstance(current, Mapping):
            current = current[part]
        elif isinstance(current, (list, tuple)):
            current = current[int(part)]
        else:
            current = getattr(current, part)
    if isinstance(current, nn.Module):
        return current.state_dict()
    return current


def storage_locations(path: Path | str) -> set[str]:
    """Every storage location a torch checkpoint names, read by torch itself."""
    seen: set[str] = set()

    def record_location(storage: Any, location: str) -> Any:
        seen.add(location)
        return storage  # left on the CPU, where torch deserialized it

    torch_load_trusted(path, map_location=record_location)
    return seen


def load_torchscript(path: Path | str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # TorchScript is deprecated but loads fine; the notice is not what is tested.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]  # noqa: TID251
    return cast(torch.jit.ScriptModule, module)


def load_sharded(folder: Path) -> dict[str, torch.Tensor]:
    index_path = next(folder.glob("*.index.json"))
    weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if shard.endswith(".safetensors"):
            merged.update(load_file(shard_path))
        else:
            merged.update(torch_load_trusted(shard_path))
    return {key: merged[key] for key in weight_map}


def ground_truth_weights(record: Mapping[str, Any], directory: Path = COMMITTED_DIR) -> dict[str, torch.Tensor]:
    """The fixture's weights (keys as in the file) as torch or safetensors read them."""
    path = fixture_path(record, directory)
    fmt = record["format"]
    if fmt in TORCH_FORMATS:
        return dict(weights_at(torch_load_trusted(path), record["weights_root"]))
    if fmt == "safetensors":
        return load_file(path)
    if fmt in ("sharded-safetensors", "sharded-bin"):
        return load_sharded(path)
    if fmt == "torchscript":
        return dict(load_torchscript(path).state_dict())
    raise ValueError(f"fixture {record['name']} ({fmt}) holds no weights")


def expected_state_dict_keys(record: Mapping[str, Any]) -> list[str]:
    """The keys ``model.state_dict()`` has for the record's model, with its key prefix."""
    model = tutorial_models().MODEL_CLASSES[record["model"]]()
    return [record["key_prefix"] + key for key in model.state_dict()]


def tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN-safe; works for float8, sparse and quantized tensors)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout:
        return False
    if a.layout != torch.strided:
        return tensors_equal(a.to_dense(), b.to_dense())
    if a.is_quantized:
        same_codes = tensors_equal(a.int_repr(), b.int_repr())
        return same_codes and tensors_equal(a.dequantize(), b.dequantize())
    return torch.equal(_bytes_of(a), _bytes_of(b))


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


# --- reading the files' structure, for assertions about how they were written ---


def zip_record(path: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(suffix))
        return archive.read(name)


def globals_of(pickle_bytes: bytes) -> set[str]:
    """``module.name`` of every GLOBAL opcode (protocol 2 pickles, as torch writes them)."""
    ops = pickletools.genops(pickle_bytes)
    return {str(arg).replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}


def legacy_main_pickle(path: Path) -> bytes:
    """The fourth of a legacy file's stacked pickles: magic, protocol, sys_info, then this."""
    stream = io.BytesIO(path.read_bytes())
    for _ in range(3):
        for _ in pickletools.genops(stream):
            pass
    start = stream.tell()
    for _ in pickletools.genops(stream):
        pass
    return stream.getvalue()[start : stream.tell()]


def data_record_offsets(path: Path) -> Iterator[tuple[str, int]]:
    """(name, offset of its first data byte) for each storage record of a zip checkpoint."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
                yield info.filename, info.header_offset + 30 + name_length + extra_length


def assert_same_content(a: Any, b: Any, where: str = "") -> None:
    """Deep equality of loaded checkpoints: tensors bit for bit, modules by state_dict."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and tensors_equal(a, b), where
    elif isinstance(a, nn.Module):
        assert type(a) is type(b), where
        assert_same_content(a.state_dict(), b.state_dict(), where)
    elif isinstance(a, argparse.Namespace):
        assert_same_content(vars(a), vars(b), where)
    elif isinstance(a, Mapping):
        assert list(a) == list(b), where
        for key in a:
            assert_same_content(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_content(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# Dtypes that arithmetic produces (and so rounds per CPU kernel); float8 and the like
# come from casts, which are exact, and are compared bit for bit.
ROUNDED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


@dataclass
class LargestDifference:
    """The largest floating-point difference met so far, and where."""

    value: float = 0.0
    where: str = ""

    def update(self, value: float, where: str) -> None:
        if not value <= self.value:  # NaN counts as the largest
            self.value, self.where = value, where


def assert_same_structure_and_close(a: Any, b: Any, atol: float, rtol: float) -> LargestDifference:
    """Loaded checkpoints equal in structure (keys, types, dtypes, shapes, integers,
    strings) exactly, and in floating-point values within `atol + rtol * |b|`: what a
    regeneration on another CPU, whose kernels round differently, must keep. Fails
    naming the largest difference; returns it when within the tolerance."""
    largest = LargestDifference()
    beyond = LargestDifference()
    _walk_close(a, b, "", atol, rtol, largest, beyond)
    worst = f"largest difference {largest.value:.3g} at {largest.where}"
    assert not beyond.where, f"{beyond.where}: beyond atol {atol:g} + rtol {rtol:g}; {worst}"
    return largest


def _walk_close(
    a: Any, b: Any, where: str, atol: float, rtol: float, largest: LargestDifference, beyond: LargestDifference
) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.layout) == (b.dtype, b.shape, b.layout), where
        if a.dtype not in ROUNDED_DTYPES or a.layout != torch.strided or a.is_quantized:
            assert tensors_equal(a, b), where
            return
        wide = torch.complex128 if a.is_complex() else torch.float64
        difference = (a.detach().to(wide) - b.detach().to(wide)).abs()
        allowed = atol + rtol * b.detach().to(wide).abs()
        both_nan = a.isnan() & b.isnan()
        difference = torch.where(both_nan, torch.zeros_like(difference), difference.nan_to_num(nan=math.inf))
        if difference.numel():
            largest.update(float(difference.max()), where)
            if bool((difference > allowed).any()):
                beyond.update(float(difference.max()), where)
    elif isinstance(a, float) and isinstance(b, float):
        difference = abs(a - b) if not (math.isnan(a) and math.isnan(b)) else 0.0
        largest.update(difference, where)
        if not difference <= atol + rtol * abs(b):
            beyond.update(difference, where)
    elif isinstance(a, nn.Module):
        assert type(a) is type(b), where
        _walk_close(a.state_dict(), b.state_dict(), where, atol, rtol, largest, beyond)
    elif isinstance(a, argparse.Namespace):
        _walk_close(vars(a), vars(b), where, atol, rtol, largest, beyond)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and list(a) == list(b), where
        for key in a:
            _walk_close(a[key], b[key], f"{where}.{key}", atol, rtol, largest, beyond)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk_close(x, y, f"{where}[{i}]", atol, rtol, largest, beyond)
    else:
        assert type(a) is type(b) and a == b, where


def read_raw_pickle(path: Path | str) -> Any:
    """Unpickle one of the fixtures' raw pickle files (our own file, holding plain values)."""
    return pickle.Unpickler(io.BytesIO(Path(path).read_bytes())).load()


def generate(out_dir: Path | str, names: Iterable[str] | None = None, big: bool = False) -> list[dict[str, Any]]:
    """Run ``fixtures/generate.py`` into ``out_dir`` and return the index it wrote.

    The generator runs in its own interpreter: it re-homes model classes into
    ``__main__`` and registers a storage tagger, neither of which belongs in the
    caller's process.
    """
    command = [sys.executable, str(GENERATOR), str(out_dir)]
    for name in names or ():
        command += ["--only", name]
    if big:
        command.append("--big")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"fixture generator failed ({completed.returncode}): {completed.stderr.strip()}")
    return load_fixture_index(Path(out_dir))
