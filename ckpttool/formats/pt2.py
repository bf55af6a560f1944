"""torch.export's PT2 archives (`torch.export.save`, `.pt2`): their weights, read from JSON.

A PT2 archive is a zip whose `<root>/archive_format` record says `pt2`. The weights of each
exported program are described by `data/weights/<model>_weights_config.json`, its tensor
constants by `data/constants/<model>_constants_config.json`: for each name, the record that
holds a storage's raw bytes and the view torch.export.load makes of it with `as_strided`
(dtype, sizes, strides, storage offset, device). Views of one storage share its record.

What torch.export.load unpickles instead (tensor subclasses, script and opaque objects:
`use_pickle`) is never read here: such a file is refused, and `scan` covers its pickles
as it covers any zip member.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from ckpttool.checkpoint import Checkpoint, Storage, TensorRef, validate_layout
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError
from ckpttool.formatnames import PT2
from ckpttool.formats.containers import scan_zip_archive
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.formats.ziparchive import ZipArchive, entry_record, is_zip, read_entry

MAX_CONFIG = 64 << 20  # a JSON description of some 10^5 tensors; larger is refused unread
_WEIGHTS_CONFIG = re.compile(r"data/weights/(.+)_weights_config\.json")
_CONSTANTS_DIR = "data/constants"
# torch.export.load reads a constant's record as raw bytes only under this prefix; script
# objects (`custom_obj_`) and opaque ones (`opaque_obj_`) it unpickles whatever the config says
_RAW_CONSTANT_PREFIX = "tensor_"

# torch._export.serde.schema.ScalarType, by value
_SCALAR_TYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    9: "complex32",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    33: "float8_e8m0fnu",
    34: "uint32",
    35: "uint64",
}
_STRIDED = 7  # torch._export.serde.schema.Layout.Strided


def is_pt2(archive: ZipArchive) -> bool:
    entry = archive.record("archive_format")
    return entry is not None and entry.size <= 16 and read_entry(archive, entry, 16).strip() == b"pt2"


def read_pt2(probe: Probe) -> Checkpoint:
    archive = probe.archive()
    models = _models(archive)
    if not models:
        raise FormatError(
            "PT2 archive without data/weights/*_weights_config.json (an AOTInductor package, or an older "
            "layout): no weights to read",
            path=archive.path,
        )
    reader = _Reader(probe)
    programs = {}
    for model in models:
        weights_name, constants_name = _configs(archive, model)
        weights = reader.tensors(weights_name)
        constants = reader.tensors(constants_name) if constants_name else {}
        programs[model] = {"state_dict": weights, "constants": constants} if constants else weights
    root = programs[models[0]] if len(models) == 1 else programs
    return Checkpoint(
        path=archive.path,
        format=PT2,
        file_size=archive.file_size,
        root=root,
        storages=reader.storages,
        metadata=reader.metadata(),
        anomalies=archive.anomalies + reader.anomalies,
        files=[archive.path],
    )


def _models(archive: ZipArchive) -> list[str]:
    prefix = archive.root + "/"
    names = (name[len(prefix) :] for name in archive.order if name.startswith(prefix))
    return [match.group(1) for name in names if (match := _WEIGHTS_CONFIG.fullmatch(name))]


def _configs(archive: ZipArchive, model: str) -> tuple[str, str | None]:
    """The weights config of `model`, and its constants config where the archive has one."""
    constants = f"{_CONSTANTS_DIR}/{model}_constants_config.json"
    return f"data/weights/{model}_weights_config.json", constants if archive.record(constants) else None


def _is_raw(config_name: str, payload: Any) -> bool:
    """Whether torch.export.load reads this entry's record as raw bytes (not unpickled)."""
    if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
        return False
    path_name = payload.get("path_name")
    return not config_name.startswith(_CONSTANTS_DIR + "/") or (
        isinstance(path_name, str) and path_name.startswith(_RAW_CONSTANT_PREFIX)
    )


def _config(probe: Probe, name: str) -> dict[str, Any]:
    """The `config` object of a JSON config, parsed once per probe (the read and the scan
    of one command share it)."""
    parsed: dict[str, dict[str, Any]] = probe.memo.setdefault("pt2 configs", {})
    if name not in parsed:
        parsed[name] = _parse_config(probe.archive(), name)
    return parsed[name]


def _parse_config(archive: ZipArchive, name: str) -> dict[str, Any]:
    entry = archive.record(name)
    if entry is None:
        raise FormatError(f"PT2 archive without {name}", path=archive.path)
    try:
        document = json.loads(read_entry(archive, entry, MAX_CONFIG))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{name} is not JSON: {exc}", path=archive.path) from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise FormatError(f"{name} has no 'config' object", path=archive.path)
    return config


def _record_name(folder: str, path_name: str) -> str:
    """The name torch.export.load hands the archive's reader for an entry's record
    (`os.path.join` on the config's folder and its path name)."""
    return posixpath.join(folder, path_name)


def _raw_records(probe: Probe) -> frozenset[str]:
    """The records that every entry naming them describes as raw bytes: nothing unpickles
    them, so a scan leaves them out. Records are found as torch's reader finds them, whatever
    the case of their letters (an entry naming `weight_0` and a pickled one `WEIGHT_0` read
    one record). A config that does not read leaves every record in."""
    archive = probe.archive()
    raw: set[str] = set()
    pickled: set[str] = set()
    try:
        for model in _models(archive):
            for config_name in _configs(archive, model):
                if config_name is None:
                    continue
                folder = config_name.rpartition("/")[0]
                for payload in _config(probe, config_name).values():
                    path_name = payload.get("path_name") if isinstance(payload, dict) else None
                    entry = archive.record(_record_name(folder, path_name)) if isinstance(path_name, str) else None
                    if entry is not None:
                        (raw if _is_raw(config_name, payload) else pickled).add(entry.name)
    except FormatError:
        return frozenset()
    return frozenset(raw - pickled - _legacy_payloads(archive))


def _legacy_payloads(archive: ZipArchive) -> set[str]:
    """The records torch.export.load unpickles in place of a model's configs when they exist:
    `data/weights/<model>.pt` and `data/constants/<model>.pt`, for each model it finds
    (each member under `models/`, named by cutting `models/` and `.json` off)."""
    prefix = f"{archive.root}/models/"
    models = {name[len(prefix) : -len(".json")] for name in archive.order if name.startswith(prefix)}
    found = (archive.record(f"{folder}/{model}.pt") for model in models for folder in ("data/weights", _CONSTANTS_DIR))
    return {entry.name for entry in found if entry is not None}


def scan_pt2(probe: Probe) -> Found:
    """Every member that holds a pickle, by content, as in any zip (the sample inputs, pickled
    payloads, script and opaque objects), and what else could run; the raw tensor records
    are left out, and only they (a `data.pkl` beside them, which torch.load would read, does
    not make the rest of `data/` a torch checkpoint's storages)."""
    return scan_zip_archive(probe.archive(), _raw_records(probe), storages=False)


class _Reader:
    """The tensors of one archive's configs; one `Storage` per record, shared by its views."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.archive = probe.archive()
        self.storages: dict[str, Storage] = {}
        self.anomalies: list[str] = []

    def tensors(self, config_name: str) -> dict[str, TensorRef]:
        config = _config(self.probe, config_name)
        folder = config_name.rpartition("/")[0]
        out = {}
        for name, payload in config.items():
            where = f"{config_name}: {name!r}"
            if not isinstance(payload, dict):
                raise FormatError(f"{where} is not an object", path=self.archive.path)
            if not _is_raw(config_name, payload):
                raise FormatError(
                    f"{where} is pickled (a tensor subclass or an object), which torch.export.load unpickles: "
                    "not read (`ckpttool scan` covers it)",
                    path=self.archive.path,
                )
            out[name] = self._tensor(name, where, folder, payload)
        return out

    def _tensor(self, name: str, where: str, folder: str, payload: dict[str, Any]) -> TensorRef:
        meta, record = payload.get("tensor_meta"), payload.get("path_name")
        if not isinstance(meta, dict) or not isinstance(record, str):
            raise FormatError(f"{where} lacks tensor_meta or path_name", path=self.archive.path)
        code = meta.get("dtype")
        dtype = _SCALAR_TYPES.get(code) if type(code) is int else None
        if dtype is None:
            raise FormatError(f"{where} has unknown dtype {meta.get('dtype')!r}", path=self.archive.path)
        if meta.get("layout", _STRIDED) != _STRIDED:
            raise FormatError(f"{where} has layout {meta.get('layout')!r}, not strided", path=self.archive.path)
        shape = _ints(meta.get("sizes"), f"{where} sizes", self.archive.path)
        stride = _ints(meta.get("strides"), f"{where} strides", self.archive.path)
        (offset,) = _ints([meta.get("storage_offset")], f"{where} storage_offset", self.archive.path)
        storage = self._storage(
            _record_name(folder, record), dtype, _device(meta.get("device"), where, self.archive.path)
        )
        if storage.dtype != dtype:
            # torch builds the record's storage with the first view's dtype and keeps it
            self.anomalies.append(f"{where} is {dtype} over record {record}, which holds {storage.dtype}")
        kind = "parameter" if payload.get("is_param") is True else "tensor"
        tensor = TensorRef(storage.dtype, shape, stride, offset, storage, meta.get("requires_grad") is True, kind)
        validate_layout(tensor, self.archive.path, name)
        return tensor

    def _storage(self, name: str, dtype: str, device: str) -> Storage:
        storage = self.storages.get(name)
        if storage is not None:
            return storage
        entry = self.archive.record(name)
        if entry is None:
            raise FormatError(f"no record {self.archive.root}/{name}", path=self.archive.path)
        itemsize = DTYPES[dtype].itemsize
        if entry.size % itemsize:
            raise FormatError(
                f"record {entry.name} holds {entry.size} bytes, not a whole number of {dtype}", path=self.archive.path
            )
        storage = Storage(name, dtype, entry.size // itemsize, device, entry_record(self.archive, entry))
        self.storages[name] = storage
        return storage

    def metadata(self) -> dict[str, str]:
        entry = self.archive.record("archive_version")
        if entry is None or entry.size > 64:
            return {}
        return {"archive_version": read_entry(self.archive, entry, 64).decode("utf-8", "replace").strip()}


def _ints(values: Any, what: str, path: str) -> tuple[int, ...]:
    """`[{"as_int": 3}, ...]`: symbolic sizes (`as_expr`) have no value to read."""
    if not isinstance(values, list):
        raise FormatError(f"{what} is not a list", path=path)
    out = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) else None
        if type(number) is not int:
            raise FormatError(f"{what} holds {json.dumps(value)[:60]}, not an integer", path=path)
        out.append(number)
    return tuple(out)


def _device(value: Any, where: str, path: str) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    index = value.get("index") if isinstance(value, dict) else None
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise FormatError(f"{where} has device {json.dumps(value)[:60]}", path=path)
    return kind if index is None else f"{kind}:{index}"


def _recognise(probe: Probe) -> bool:
    return is_zip(probe.head) and is_pt2(probe.archive())


PT2_FORMAT = Format(PT2, _recognise, pickles=scan_pt2, read=read_pt2)
