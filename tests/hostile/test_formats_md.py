"""FORMATS.md's hostile and broken inputs, cases 1-20, through the CLI and the library.

Each case checks the exit code, the verdict or typed error, that errors are one
stderr line naming the file (no traceback), and that no payload ran: every payload
would create `marker`, and every test asserts it does not exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hostile.builders import (
    DEFLATED,
    FLAG_ENCRYPTED,
    FLAG_PATCHED,
    FLAG_STRONG_ENCRYPTION,
    LegacyStorage,
    Op,
    TensorSpec,
    ZipMember,
    checkpoint_zip,
    deflate_zeros,
    empty_ordered_dict,
    float_tensor,
    global_ref,
    integer,
    legacy_checkpoint,
    png_image,
    rebuild_tensor,
    retouched,
    safetensors_bytes,
    short_text,
    state_dict_pickle,
    storage_bytes,
    text,
    torch_zip,
    torch_zip_members,
    tuple_of,
    value,
    whole,
    zip_bytes,
)
from hostile.payloads import (
    CONTAINERS,
    Payload,
    builtins_payloads,
    computed_name_payloads,
    container_abuse_payloads,
    dumped_payloads,
    gadget_payloads,
    handwritten_system_payloads,
    inner_system_pickle,
)
from hostile.support import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_inspect_refuses,
    assert_no_crash,
    assert_not_run,
    assert_not_safe,
    assert_one_line_error,
    assert_scan_fails_closed,
    global_entry,
    global_names,
    only_file,
    run_cli,
    run_cli_process,
    scan,
    torch_accepts,
)

from ckpttool.errors import (
    CkptError,
    FormatError,
    LimitError,
    PickleError,
    SafetensorsError,
    TensorLayoutError,
    UnknownFormatError,
    ZipFormatError,
)
from ckpttool.formats import read_checkpoint
from ckpttool.ops.safety import scan_file
from ckpttool.pickle import decode

WEIGHT = float_tensor("w", "0", 2, 3)
BIAS = float_tensor("b", "1", 3)
GIB = 1 << 30
# Address space for CLI runs on bombs: ample for these tiny files, far below any blow-up.
MEMORY_LIMIT = 768 << 20


def good_members() -> list[ZipMember]:
    return torch_zip_members(whole_state_dict(), {spec.key: storage_bytes(spec) for spec in (WEIGHT, BIAS)})


def whole_state_dict() -> bytes:
    return state_dict_pickle([WEIGHT, BIAS])


def system_call(marker: Path) -> bytes:
    """posix.system(touch MARKER) as a complete protocol 2 pickle."""
    return inner_system_pickle(marker)


# -- case 1: not checkpoints at all ----------------------------------------------------------------

NOT_CHECKPOINTS: dict[str, bytes] = {
    "empty.pt": b"",
    "zip_magic_only.pt": b"PK\x03\x04",
    "seven_zero_bytes.pth": bytes(7),
    "three_letters.bin": b"abc",
    "png_renamed.pt": png_image(),
    "model_card.pt": b"# Model card\n\nTrained for three epochs.\n",
    "config.bin": b'{"hidden_size": 768, "num_layers": 12}\n',
    "hello.pth": b"hello world\n",
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_case01_files_that_are_not_checkpoints_are_refused(write: FileWriter, name: str) -> None:
    path = write(name, NOT_CHECKPOINTS[name])
    assert_one_line_error(scan(path), path)
    assert_inspect_refuses(path)
    with pytest.raises(CkptError):
        read_checkpoint(str(path))
    with pytest.raises(CkptError):
        scan_file(str(path))


def test_case01_empty_file_is_an_unknown_format(write: FileWriter) -> None:
    with pytest.raises(UnknownFormatError, match="empty"):
        read_checkpoint(str(write("empty.pt", b"")))


def test_case01_png_is_not_read_as_a_pickle(write: FileWriter) -> None:
    with pytest.raises(UnknownFormatError):
        read_checkpoint(str(write("photo.pt", png_image())))


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_case01_missing_files_and_plain_folders_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent.pt"
    if kind == "folder":
        path.mkdir()
    assert_one_line_error(scan(path), path)
    assert_inspect_refuses(path)


# -- case 2: truncated zip and pickles ----------------------------------------------------------


@pytest.mark.parametrize("cut", ["end_record", "last_byte", "half"])
def test_case02_zip_without_its_end_record(write: FileWriter, cut: str) -> None:
    whole_zip = zip_bytes(good_members())
    data = {
        "end_record": zip_bytes(good_members(), end_record=False),
        "last_byte": whole_zip[:-1],
        "half": whole_zip[: len(whole_zip) // 2],
    }[cut]
    path = write("cut.pt", data)
    assert_one_line_error(scan(path), path)
    assert_inspect_refuses(path)
    with pytest.raises(ZipFormatError):
        read_checkpoint(str(path))


@pytest.mark.parametrize("how", ["truncated", "without_stop"])
def test_case02_data_pkl_cut_short(write: FileWriter, how: str) -> None:
    pickle_bytes = whole_state_dict()
    cut = pickle_bytes[: len(pickle_bytes) // 2] if how == "truncated" else pickle_bytes[:-1]
    path = write("short.pt", zip_bytes(retouched(good_members(), "data.pkl", data=cut)))
    assert_inspect_refuses(path)
    assert_scan_fails_closed(path)
    with pytest.raises(PickleError):
        read_checkpoint(str(path))


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x02", b"\x80\x02}", b"\x80\x02]K\x01a"], ids=repr)
def test_case02_raw_pickle_without_stop(write: FileWriter, data: bytes) -> None:
    path = write("short.pkl", data)
    assert_inspect_refuses(path)
    assert_scan_fails_closed(path)


# -- case 3: stack underflow, undefined memo ----------------------------------------------------

UNDERFLOWING_OPCODES = [
    Op.TUPLE1, Op.TUPLE2, Op.TUPLE3, Op.REDUCE, Op.BUILD, Op.APPEND, Op.SETITEM, Op.NEWOBJ,
    Op.NEWOBJ_EX, Op.STACK_GLOBAL, Op.DUP, Op.BINPUT + b"\x00", Op.MEMOIZE, Op.BINPERSID,
    Op.POP, b"1", Op.APPENDS, Op.SETITEMS, Op.TUPLE, Op.LIST, Op.DICT, Op.FROZENSET,
    Op.ADDITEMS, Op.OBJ, Op.READONLY_BUFFER, b"",
]  # fmt: skip


@pytest.mark.parametrize("opcode", UNDERFLOWING_OPCODES, ids=repr)
def test_case03_stack_underflow_is_a_pickle_error(opcode: bytes) -> None:
    # b"" leaves STOP itself to pop from an empty stack.
    with pytest.raises(PickleError):
        decode(b"\x80\x04" + opcode + Op.STOP)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x02\x87.", "stack underflow"),  # TUPLE3 on an empty stack
        (b"\x80\x02h\x05.", "memo slot 5"),  # BINGET of a slot never written
        (b"\x80\x02j\xff\xff\xff\xff.", "memo slot 4294967295"),  # LONG_BINGET
        (b"g7\n.", "memo slot 7"),  # protocol 0 GET
    ],
)
def test_case03_underflow_and_undefined_memo(write: FileWriter, data: bytes, message: str) -> None:
    with pytest.raises(PickleError, match=message):
        decode(data)
    for path in (write("raw.pkl", data), write("zip.pt", torch_zip(data))):
        assert_inspect_refuses(path)
        assert_scan_fails_closed(path)


# -- case 4: GLOBAL names that are not UTF-8; STACK_GLOBAL operands that are not strings -----------


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02c\xff\xfe\nsystem\n)R.",  # module name
        b"\x80\x02cposix\nsys\xc3\x28tem\n)R.",  # name: a broken two-byte sequence
        b"(\x80\x02iposix\n\xffsystem\n.",  # INST reads its name the same way
    ],
    ids=["module", "name", "INST"],
)
def test_case04_invalid_utf8_in_global(write: FileWriter, marker: Path, data: bytes) -> None:
    with pytest.raises(PickleError, match="UTF-8"):
        decode(data)
    for path in (write("raw.pkl", data), write("zip.pt", torch_zip(data))):
        assert_inspect_refuses(path)
        assert_scan_fails_closed(path)
    assert_not_run(marker)


STACK_GLOBAL_OPERANDS = {
    "ints": integer(1) + integer(2),
    "none": Op.NONE + short_text("system"),
    "bytes": Op.SHORT_BINBYTES + b"\x05posix" + short_text("system"),
    "tuple": short_text("posix") + value(("system",)),
    "a_global": global_ref("builtins", "str") + short_text("system"),
}


@pytest.mark.parametrize("operands", sorted(STACK_GLOBAL_OPERANDS))
def test_case04_stack_global_on_non_strings(write: FileWriter, marker: Path, operands: str) -> None:
    body = STACK_GLOBAL_OPERANDS[operands] + Op.STACK_GLOBAL + value(("touch " + str(marker),)) + Op.REDUCE
    data = b"\x80\x04" + body + Op.STOP
    with pytest.raises(PickleError, match="STACK_GLOBAL"):
        decode(data)
    path = write("computed.pkl", data)
    assert_scan_fails_closed(path)
    assert_inspect_refuses(path)
    assert_not_run(marker)


# -- case 5: zip headers that disagree ------------------------------------------------------------

# name: (record, what changes in its headers, what the scan's problems must mention)
ZIP_TRICKS: dict[str, tuple[str, dict[str, object], str]] = {
    # CVE-2025-1944: Python's zipfile refuses a local name that differs; torch does not look.
    "local_name_differs": ("data.pkl", {"local_name": "archive/innocent.txt"}, "local header"),
    "crc_mismatch": ("data.pkl", {"crc": 0x12345678}, "CRC"),
    # CVE-2025-1945: flag bits that make Python's zipfile give up.
    "encrypted_flag": ("data.pkl", {"flags": FLAG_ENCRYPTED}, "flags"),
    "patched_flag": ("data.pkl", {"flags": FLAG_PATCHED}, "flags"),
    "strong_encryption_flag": ("data.pkl", {"flags": FLAG_STRONG_ENCRYPTION}, "flags"),
    "encrypted_storage_record": ("data/0", {"flags": FLAG_ENCRYPTED}, "flags"),
}


@pytest.mark.parametrize("trick", sorted(ZIP_TRICKS))
def test_case05_zip_anomalies_are_reported(write: FileWriter, trick: str) -> None:
    record, changes, mentioned = ZIP_TRICKS[trick]
    path = write("tricked.pt", zip_bytes(retouched(good_members(), record, **changes)))
    report = assert_dangerous(path)
    assert any(mentioned in p for p in report["problems"]), report["problems"]
    outcome = assert_inspect_harmless(path)  # read as torch reads it, anomaly reported
    if outcome.exit_code == 0:
        assert any(mentioned in a for a in outcome.json()["anomalies"])


@pytest.mark.parametrize(
    "changes",
    [
        {"local_name": "archive/innocent.txt"},
        {"crc": 0},
        {"flags": FLAG_ENCRYPTED},
        {"flags": FLAG_PATCHED},
        {"local_flags": FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION},
        {"method": DEFLATED},
    ],
    ids=["local_name", "crc", "encrypted", "patched", "local_flags_only", "deflated"],
)
def test_case05_header_tricks_do_not_hide_a_payload(write: FileWriter, marker: Path, changes: dict[str, Any]) -> None:
    """picklescan's zip bypasses: the payload is still found whatever the headers say."""
    members = retouched(torch_zip_members(system_call(marker)), "data.pkl", **changes)
    path = write("tricked.pt", zip_bytes(members))
    assert_dangerous(path, "posix.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)


def test_case05_a_local_name_anomaly_reads_as_torch_reads_it(write: FileWriter) -> None:
    torch = pytest.importorskip("torch")
    path = write("renamed.pt", zip_bytes(retouched(good_members(), "data.pkl", local_name="x/y")))
    loaded = torch.load(path, weights_only=True)
    tensors = run_cli("inspect", "--format", "json", path).json()["tensors"]
    assert {t["key"]: t["shape"] for t in tensors} == {k: list(v.shape) for k, v in loaded.items()}


# -- case 6: no data.pkl, byteorder 'middle', two roots -------------------------------------------


def test_case06_zip_without_data_pkl(write: FileWriter) -> None:
    members = [m for m in good_members() if not m.name.endswith("data.pkl")]
    path = write("nopickle.pt", zip_bytes(members))
    assert "data.pkl" in assert_inspect_refuses(path)
    with pytest.raises(FormatError):
        read_checkpoint(str(path))
    # Not a checkpoint, but a zip whose members hold no pickle: nothing in it can run.
    outcome = scan(path)
    assert outcome.exit_code == 0
    report = only_file(outcome)
    assert (report["verdict"], report["pickles"]) == ("safe", 0)
    assert report["notes"]


def test_case06_byteorder_middle(write: FileWriter) -> None:
    path = write("middle.pt", torch_zip(whole_state_dict(), byteorder=b"middle"))
    assert "byteorder" in assert_inspect_refuses(path)
    with pytest.raises(FormatError, match="byteorder"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("evil_first", [False, True])
def test_case06_entries_under_two_roots(write: FileWriter, marker: Path, evil_first: bool) -> None:
    benign = good_members()
    evil = torch_zip_members(system_call(marker), root="other")
    path = write("tworoots.pt", zip_bytes(evil + benign if evil_first else benign + evil))
    report = assert_dangerous(path, "posix.system")
    assert any("root" in p for p in report["problems"])
    assert_inspect_harmless(path)
    assert_not_run(marker)


# -- case 7: persistent ids -----------------------------------------------------------------------


def zip_with_pid(pid: bytes) -> bytes:
    body = empty_ordered_dict() + text("w") + rebuild_tensor(WEIGHT, pid=pid) + Op.SETITEM
    return torch_zip(whole(body), {"0": storage_bytes(WEIGHT)})


PERSISTENT_IDS: dict[str, bytes] = {
    "a_string": text("evil") + Op.BINPERSID,
    "an_int": integer(0) + Op.BINPERSID,
    "too_short": tuple_of([text("storage")]) + Op.BINPERSID,
    "module_tuple": tuple_of([text("module"), global_ref("torch.nn", "Linear"), text("model.py"), text("source")])
    + Op.BINPERSID,
    "text_PERSID": Op.PERSID + b"storage\n",
}


@pytest.mark.parametrize("pid", sorted(PERSISTENT_IDS))
def test_case07_persistent_id_that_is_not_a_storage(write: FileWriter, pid: str) -> None:
    path = write("pid.pt", zip_with_pid(PERSISTENT_IDS[pid]))
    assert_inspect_refuses(path)
    with pytest.raises(FormatError):
        read_checkpoint(str(path))


def test_case07_storage_type_that_is_a_gadget(write: FileWriter) -> None:
    pid = (
        Op.MARK + text("storage") + global_ref("builtins", "eval") + text("0") + text("cpu")
        + integer(6) + Op.TUPLE + Op.BINPERSID
    )  # fmt: skip
    path = write("pid.pt", zip_with_pid(pid))
    assert_dangerous(path, "builtins.eval")
    assert_inspect_refuses(path)


def test_case07_storage_without_its_record(write: FileWriter) -> None:
    path = write("norecord.pt", torch_zip(whole_state_dict(), {"0": storage_bytes(WEIGHT)}))
    assert "data/1" in assert_inspect_refuses(path)
    with pytest.raises(FormatError, match="no record"):
        read_checkpoint(str(path))


# -- case 8: sizes that do not fit ----------------------------------------------------------------

LAYOUTS: dict[str, TensorSpec] = {
    "record_too_big": replace(WEIGHT, numel=5),
    "record_too_small": replace(WEIGHT, numel=7),
    "numel_2_to_the_40": replace(WEIGHT, numel=1 << 40),
    "size_past_storage": replace(WEIGHT, size=(3, 3)),
    "stride_past_storage": replace(WEIGHT, stride=(100, 1)),
    "offset_past_storage": replace(WEIGHT, offset=5),
    "negative_size": replace(WEIGHT, size=(-1, 3)),
    "negative_stride": replace(WEIGHT, stride=(-3, 1)),
    "negative_offset": replace(WEIGHT, offset=-1),
    "size_product_overflows_int64": replace(WEIGHT, size=(1 << 62, 1 << 62)),
    "size_over_uint64": replace(WEIGHT, size=(1 << 64, 1)),
    "stride_over_int64": replace(WEIGHT, stride=(1 << 63, 1)),
}


def layout_zip(spec: TensorSpec) -> bytes:
    return torch_zip(state_dict_pickle([spec]), {"0": storage_bytes(WEIGHT)})


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_case08_sizes_that_do_not_fit_are_rejected_before_reading(write: FileWriter, layout: str) -> None:
    path = write("layout.pt", layout_zip(LAYOUTS[layout]))
    started = time.monotonic()
    assert_inspect_refuses(path)
    with pytest.raises((TensorLayoutError, FormatError)):
        read_checkpoint(str(path))
    assert time.monotonic() - started < 5  # nothing was allocated for the declared sizes


@pytest.mark.parametrize("layout", ["record_too_small", "size_past_storage", "negative_size"])
def test_case08_legacy_sizes_that_do_not_fit(write: FileWriter, layout: str) -> None:
    spec = LAYOUTS[layout]
    legacy = legacy_checkpoint([WEIGHT])
    legacy.main = legacy_checkpoint([spec]).main
    path = write("layout.pth", legacy.to_bytes())
    assert_inspect_refuses(path)
    with pytest.raises(FormatError):
        read_checkpoint(str(path))


# -- cases 6-8 against torch: a scan must not pass what torch's loader rejects --------------------

REFUSED_BY_TORCH: dict[str, Callable[[], bytes]] = {
    # torch's weights_only unpickler refuses these persistent ids itself.
    **{f"pid_{name}": partial(zip_with_pid, pid) for name, pid in PERSISTENT_IDS.items()},
    # GHSA-63cw-57p8-fm3p: records that do not match their storage's numel were an
    # out-of-bounds read in torch < 2.10; views past the storage are the same class of bug.
    **{f"layout_{name}": partial(layout_zip, spec) for name, spec in LAYOUTS.items()},
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_TORCH))
def test_cases07_08_scan_does_not_pass_what_torch_refuses(write: FileWriter, case: str) -> None:
    path = write("refused.pt", REFUSED_BY_TORCH[case]())
    assert not torch_accepts(path)
    assert_not_safe(path)


# -- case 9: DEFLATE bombs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_gib_of_zeros() -> bytes:
    return deflate_zeros(4 * GIB)


@pytest.mark.parametrize(
    ("record", "declared"),
    [("data.pkl", 200), ("data.pkl", 0xFFFFFFFF), ("byteorder", 6), ("version", 2), ("data/0", 24)],
)
def test_case09_deflate_bomb_is_never_inflated_blindly(
    write: FileWriter, four_gib_of_zeros: bytes, record: str, declared: int
) -> None:
    members = retouched(good_members(), record, method=DEFLATED, payload=four_gib_of_zeros, declared_size=declared)
    path = write("bomb.pt", zip_bytes(members))
    for command in ("scan", "inspect"):
        started = time.monotonic()
        outcome = run_cli_process(command, "--format", "json", path, memory_limit=MEMORY_LIMIT, timeout=60)
        assert_no_crash(outcome)
        assert outcome.exit_code in (0, 1, 2), outcome
        if outcome.exit_code == 2:
            assert_one_line_error(outcome, path)
        assert time.monotonic() - started < 30


# -- case 10: legacy files ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1000, 1002, -1], ids=str)
def test_case10_legacy_protocol_version_other_than_1001(write: FileWriter, version: int) -> None:
    path = write("legacy.pth", legacy_checkpoint([WEIGHT], protocol_version=version).to_bytes())
    assert "1001" in assert_inspect_refuses(path)
    assert_scan_fails_closed(path)


def test_case10_legacy_protocol_version_as_text(write: FileWriter) -> None:
    legacy = legacy_checkpoint([WEIGHT])
    path = write("legacy.pth", legacy.to_bytes().replace(whole(integer(1001)), whole(text("1001")), 1))
    assert_inspect_refuses(path)
    assert_scan_fails_closed(path)


@pytest.mark.parametrize(
    "storage",
    [
        LegacyStorage("0", 6, storage_bytes(WEIGHT)[:12]),  # count says 6, 3 floats follow
        LegacyStorage("0", 1 << 40, storage_bytes(WEIGHT)),  # count far past the file
        LegacyStorage("0", -1, storage_bytes(WEIGHT)),
        LegacyStorage("0", 6, b""),
    ],
    ids=["short", "huge_count", "negative_count", "no_bytes"],
)
def test_case10_legacy_raw_storage_shorter_than_its_count(write: FileWriter, storage: LegacyStorage) -> None:
    legacy = legacy_checkpoint([WEIGHT])
    legacy.storages = [storage]
    path = write("legacy.pth", legacy.to_bytes())
    assert_inspect_refuses(path)
    assert_scan_fails_closed(path)
    with pytest.raises(FormatError):
        read_checkpoint(str(path))


# -- cases 11-14: code execution in every spelling ------------------------------------------------

_NOWHERE = Path("/nonexistent/marker")
SYSTEM_PAYLOADS = [p.name for p in dumped_payloads(_NOWHERE) + handwritten_system_payloads(_NOWHERE)]
BUILTINS_PAYLOADS = [p.name for p in builtins_payloads(_NOWHERE)]
COMPUTED_PAYLOADS = [p.name for p in computed_name_payloads(_NOWHERE)]
GADGETS = [p.name for p in gadget_payloads(_NOWHERE, _NOWHERE)]


def by_name(payloads: list[Payload], name: str) -> Payload:
    return next(p for p in payloads if p.name == name)


def check_payload(write: FileWriter, marker: Path, payload: Payload, container: str) -> dict[str, Any]:
    """Scan: dangerous, each called global listed and dangerous; inspect: harmless; nothing ran."""
    filename, wrap = CONTAINERS[container]
    path = write(filename, wrap(payload.data))
    report = assert_dangerous(path, *payload.called)
    for qualname in payload.called:
        entry = global_entry(report, qualname)
        assert entry["uses"] != ["reference"], entry
    assert_inspect_harmless(path)
    assert_not_run(marker)
    return report


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("name", SYSTEM_PAYLOADS)
def test_case11_system_and_subprocess_in_every_protocol(
    write: FileWriter, marker: Path, name: str, container: str
) -> None:
    payloads = dumped_payloads(marker) + handwritten_system_payloads(marker)
    report = check_payload(write, marker, by_name(payloads, name), container)
    assert all("call" in g["uses"] for g in report["globals"] if g["verdict"] == "dangerous")


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("name", BUILTINS_PAYLOADS)
def test_case12_builtins_chains_inst_and_obj(write: FileWriter, marker: Path, name: str, container: str) -> None:
    check_payload(write, marker, by_name(builtins_payloads(marker), name), container)


@pytest.mark.parametrize("name", COMPUTED_PAYLOADS)
def test_case13_names_computed_at_load_time(write: FileWriter, marker: Path, name: str) -> None:
    payload = by_name(computed_name_payloads(marker), name)
    report = check_payload(write, marker, payload, "raw")
    assert report["problems"], "an unresolvable name must be explained"


@pytest.mark.parametrize("name", GADGETS)
def test_case14_gadgets_in_odd_modules_are_dangerous(write: FileWriter, marker: Path, name: str) -> None:
    inner = write("inner.pt", inner_system_pickle(marker))  # what the torch.load gadget would load
    payload = by_name(gadget_payloads(marker, inner), name)
    report = check_payload(write, marker, payload, "torch-zip")
    assert report["allowlist"] is None  # never offer to allowlist a gadget


@pytest.mark.parametrize("name", [p.name for p in container_abuse_payloads()])
def test_case14_setitem_and_append_on_non_containers(write: FileWriter, marker: Path, name: str) -> None:
    """GHSA-63cw-57p8-fm3p: SETITEM(S)/APPEND reaching objects that are not dicts or lists."""
    payload = by_name(container_abuse_payloads(), name)
    report = check_payload(write, marker, payload, "torch-zip")
    assert any("torch refuses" in p for p in report["problems"])


# -- case 15: a benign pickle, then a malicious one -----------------------------------------------


def test_case15_every_pickle_of_a_raw_file_is_scanned(write: FileWriter, marker: Path) -> None:
    benign = [whole(value({"epoch": 3})), state_dict_pickle([WEIGHT])]
    path = write("stacked.bin", b"".join(benign) + system_call(marker))
    report = assert_dangerous(path, "posix.system")
    assert report["pickles"] == 3
    assert_inspect_harmless(path)
    assert_not_run(marker)


@pytest.mark.parametrize("slot", ["sys_info", "keys"])
def test_case15_every_stacked_pickle_of_a_legacy_file_is_scanned(write: FileWriter, marker: Path, slot: str) -> None:
    legacy = legacy_checkpoint([WEIGHT])
    setattr(legacy, slot, system_call(marker))
    path = write("legacy.pth", legacy.to_bytes())
    assert_dangerous(path, "posix.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)


def test_case15_a_pickle_hidden_after_the_legacy_storages_is_reported(write: FileWriter, marker: Path) -> None:
    path = write("legacy.pth", legacy_checkpoint([WEIGHT], trailer=system_call(marker)).to_bytes())
    assert_not_safe(path)
    assert_not_run(marker)


def test_case15_every_pkl_record_of_a_zip_is_scanned(write: FileWriter, marker: Path) -> None:
    members = [*good_members(), ZipMember("archive/extra.pkl", system_call(marker))]
    path = write("extra.pt", zip_bytes(members))
    report = assert_dangerous(path, "posix.system")
    assert report["pickles"] == 2
    assert_inspect_harmless(path)
    assert_not_run(marker)


# -- case 16: a malicious prefix, then garbage ----------------------------------------------------

PREFIXES = {
    "call_then_garbage": lambda m: system_call(m)[:-1] + b"\xff\xfe garbage",
    "global_then_garbage": lambda m: b"\x80\x02" + global_ref("posix", "system") + b"\xffgarbage",
    "call_then_truncated": lambda m: system_call(m)[:-1],
    "framed_then_garbage": lambda m: (
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00"
        + short_text("posix")
        + short_text("system")
        + Op.STACK_GLOBAL
        + b"\xfe"
    ),
}


@pytest.mark.parametrize("container", ["raw", "torch-zip"])
@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_case16_malicious_prefix_then_garbage(write: FileWriter, marker: Path, prefix: str, container: str) -> None:
    data = PREFIXES[prefix](marker)
    with pytest.raises(PickleError) as failure:
        decode(data)
    path = write("prefix.bin", data if container == "raw" else torch_zip(data))
    report = assert_dangerous(path, "posix.system")
    error = failure.value.message.split(" (pickle byte")[0]
    assert any(error in p for p in report["problems"]), report["problems"]
    assert_inspect_refuses(path)
    assert_not_run(marker)


# -- case 17: billion laughs, self-reference, deep nesting ----------------------------------------


def memo_laughs(levels: int = 9, fanout: int = 10) -> bytes:
    """Level i: a list holding level i-1 `fanout` times (BINGET): fanout**levels leaves."""
    out = b"\x80\x02" + text("lol") + Op.BINPUT + b"\x00"
    for level in range(1, levels + 1):
        out += Op.EMPTY_LIST + Op.MARK + (Op.BINGET + bytes([level - 1])) * fanout + Op.APPENDS
        out += Op.BINPUT + bytes([level])
    return out + Op.STOP


def dup_laughs(levels: int = 64) -> bytes:
    """DUP + TUPLE2, `levels` times: a tuple of 2**levels leaves."""
    return b"\x80\x02" + Op.NONE + (Op.DUP + Op.TUPLE2) * levels + Op.STOP


def shared_tuple(levels: int) -> bytes:
    """A tuple of 2**levels leaves, each level two memo references to the one below."""
    out = Op.NONE
    for level in range(levels):
        index = level.to_bytes(4, "little")
        out += Op.LONG_BINPUT + index + Op.LONG_BINGET + index + Op.TUPLE2
    return out


BOUNDED_SHAPES: dict[str, bytes] = {
    "memo_laughs": memo_laughs(),
    "dup_laughs": dup_laughs(),
    "shared_tuple_value": b"\x80\x02" + shared_tuple(64) + Op.STOP,
    "list_containing_itself": b"\x80\x02]q\x00h\x00a.",
    "dict_containing_itself": b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.",
    "nested_lists_1e5": b"\x80\x02" + Op.EMPTY_LIST * 100_000 + Op.APPEND * 99_999 + Op.STOP,
    "nested_dicts_1e5": b"\x80\x02"
    + (Op.EMPTY_DICT + text("k")) * 100_000
    + Op.EMPTY_DICT
    + Op.SETITEM * 100_000
    + Op.STOP,
    "nested_tuples_1e5": b"\x80\x02" + Op.NONE + Op.TUPLE1 * 100_000 + Op.STOP,
    "nested_marks_1e6": b"\x80\x02" + Op.MARK * 1_000_000 + Op.STOP,
    # Hashing a key walks every leaf: a shared tuple as a dict key or set member is 2**40 steps.
    "shared_tuple_as_dict_key": b"\x80\x02" + Op.EMPTY_DICT + shared_tuple(40) + integer(1) + Op.SETITEM + Op.STOP,
    "shared_tuple_in_frozenset": b"\x80\x04" + Op.MARK + shared_tuple(40) + Op.FROZENSET + Op.STOP,
}


@pytest.mark.parametrize("shape", sorted(BOUNDED_SHAPES))
def test_case17_memory_and_time_stay_bounded(write: FileWriter, shape: str) -> None:
    path = write(f"{shape}.pkl", BOUNDED_SHAPES[shape])
    for command in ("scan", "inspect"):
        started = time.monotonic()
        try:
            outcome = run_cli_process(command, "--format", "json", path, memory_limit=MEMORY_LIMIT, timeout=20)
        except Exception as exc:  # subprocess.TimeoutExpired
            pytest.fail(f"{command} {shape}: no answer within 20 s ({type(exc).__name__})")
        assert_no_crash(outcome)
        if outcome.exit_code == 2:
            assert_one_line_error(outcome, path)
        else:
            assert outcome.exit_code in (0, 1)
            assert len(outcome.stdout) < 1 << 20  # the output does not expand the structure
            json.loads(outcome.stdout)
        assert time.monotonic() - started < 20


def test_case17_a_million_nested_marks_is_a_limit_and_fails_closed(write: FileWriter) -> None:
    path = write("marks.pkl", BOUNDED_SHAPES["nested_marks_1e6"])
    with pytest.raises(LimitError, match="MARK"):
        decode(path.read_bytes())
    report = assert_scan_fails_closed(path)
    assert report is not None and any("limit" in p for p in report["problems"])
    assert_inspect_refuses(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02X\xff\xff\xff\xffabc.",  # BINUNICODE of 4 GiB in a 12-byte file
        b"\x80\x04\x8d" + b"\xff" * 8 + b"abc.",  # BINUNICODE8 of 2**64 - 1 bytes
        b"\x80\x04\x8e" + b"\xff" * 7 + b"\x7fabc.",  # BINBYTES8 of 2**63 - 1 bytes
        b"\x80\x05\x96" + b"\xff" * 7 + b"\x7fabc.",  # BYTEARRAY8
        b"\x80\x02\x8b\xff\xff\xff\x7f.",  # LONG4 of 2 GiB
        b"\x80\x02T\xff\xff\xff\x7fabc.",  # BINSTRING of 2 GiB
        b"\x80\x02I" + b"9" * 100_000 + b"\n.",  # a 100,000-digit decimal INT
    ],
    ids=[
        "BINUNICODE",
        "BINUNICODE8",
        "BINBYTES8",
        "BYTEARRAY8",
        "LONG4",
        "BINSTRING",
        "INT",
    ],
)
def test_case17_lengths_that_lie_are_errors_not_allocations(data: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(PickleError):
        decode(data)
    assert time.monotonic() - started < 1


def test_case17_a_frame_that_lies_is_a_differential_not_an_allocation() -> None:
    """The C unpickler stops at a FRAME longer than the data; the pure-Python one reads on:
    the machine decodes what there is and flags the disagreement."""
    started = time.monotonic()
    decoded = decode(b"\x80\x04\x95" + b"\xff" * 8 + b"N.")
    assert time.monotonic() - started < 1
    assert any("parser differential" in p and "FRAME" in p for p in decoded.problems)


# -- case 18: detected by content -----------------------------------------------------------------


def safetensors_file() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return safetensors_bytes(header, bytes(8))


CONTENT_NOT_NAME: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "raw_pickle_as_bin": (
        "pytorch_model.bin",
        lambda: whole(value({"w": [1.0, 2.0]})),
        "raw-pickle",
    ),
    "raw_pickle_as_safetensors": (
        "model.safetensors",
        lambda: whole(value({"a": 1})),
        "raw-pickle",
    ),
    "zip_as_bin": ("pytorch_model.bin", lambda: checkpoint_zip([WEIGHT]), "torch-zip"),
    "legacy_as_safetensors": (
        "model.safetensors",
        lambda: legacy_checkpoint([WEIGHT]).to_bytes(),
        "torch-legacy",
    ),
    "safetensors_as_pt": ("model.pt", safetensors_file, "safetensors"),
}


@pytest.mark.parametrize("case", sorted(CONTENT_NOT_NAME))
def test_case18_format_comes_from_content(write: FileWriter, case: str) -> None:
    name, build, expected = CONTENT_NOT_NAME[case]
    path = write(name, build())
    outcome = scan(path)
    assert outcome.exit_code == 0, outcome
    assert only_file(outcome)["format"] == expected
    assert run_cli("inspect", "--format", "json", path).json()["format"] == expected
    assert read_checkpoint(str(path)).format == expected


def handmade_torchscript(marker: Path) -> bytes:
    """The records that make torch (and CVE-2025-32434) treat a zip as TorchScript."""
    members = torch_zip_members(whole_state_dict(), {s.key: storage_bytes(s) for s in (WEIGHT, BIAS)})
    code = f"def forward(self, x):\n    ops.aten.system('touch {marker}')\n".encode()
    return zip_bytes(
        [
            *members,
            ZipMember("archive/constants.pkl", whole(value(()))),
            ZipMember("archive/code/__torch__.py", code),
        ]
    )


@pytest.fixture(scope="module")
def scripted_linear(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("torchscript") / "scripted.pt"
    with pytest.warns(FutureWarning, match=r"torch\.jit\.\w+` is deprecated"):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path.read_bytes()


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.safetensors"])
@pytest.mark.parametrize("origin", ["torch.jit.save", "handmade"])
def test_case18_torchscript_is_recognised_and_flagged(
    write: FileWriter, marker: Path, scripted_linear: bytes, name: str, origin: str
) -> None:
    path = write(name, scripted_linear if origin == "torch.jit.save" else handmade_torchscript(marker))
    outcome = scan(path)
    assert outcome.exit_code == 1
    report = only_file(outcome)
    assert report["format"] == "torchscript"
    if origin == "torch.jit.save":  # its code runs: an unknown call until its top-level class is allowed
        assert (report["verdict"], report["problems"]) == ("unknown-call", [])
        linear = [g for g in report["globals"] if g["module"].startswith("__torch__")]
        assert [(g["name"], g["verdict"]) for g in linear] == [("Linear", "unknown-call")]
    else:  # no TorchScript module in data.pkl: not what torch.jit.save writes
        assert report["verdict"] == "dangerous"
        assert any("TorchScript" in p for p in report["problems"])
    inspected = assert_inspect_harmless(path)
    if inspected.exit_code == 0:
        assert inspected.json()["format"] == "torchscript"
    assert_not_run(marker)


# -- case 19: safetensors -------------------------------------------------------------------------


def _header(entries: dict[str, object]) -> bytes:
    return json.dumps(entries).encode()


def _f32(shape: list[int], offsets: list[int]) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


BAD_SAFETENSORS: dict[str, bytes] = {
    "header_over_100MB": safetensors_bytes(b"{}", declared_length=100_000_001),
    "header_over_100MB_pickle_opcode_first": safetensors_bytes(b"{}", declared_length=100_000_077),
    "header_longer_than_file": safetensors_bytes(_header({"w": _f32([2], [0, 8])}), bytes(8), declared_length=1000),
    "header_not_utf8": safetensors_bytes(
        b'{"w\xff": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8)
    ),
    "header_not_json": safetensors_bytes(b"{this is not json}"),
    "header_deeply_nested_json": safetensors_bytes(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "shape_overflow": safetensors_bytes(_header({"w": _f32([1 << 40] * 3, [0, 8])}), bytes(8)),
    "bytes_missing": safetensors_bytes(_header({"w": _f32([4], [0, 16])}), bytes(8)),
    "bytes_left_over": safetensors_bytes(_header({"w": _f32([2], [0, 8])}), bytes(12)),
    "overlapping_offsets": safetensors_bytes(_header({"a": _f32([2], [0, 8]), "b": _f32([2], [4, 12])}), bytes(12)),
    "gap_between_tensors": safetensors_bytes(_header({"a": _f32([1], [0, 4]), "b": _f32([1], [8, 12])}), bytes(12)),
    "offsets_reversed": safetensors_bytes(_header({"w": _f32([0], [8, 0])}), bytes(8)),
    "offset_negative": safetensors_bytes(_header({"w": _f32([2], [-8, 0])}), bytes(8)),
    "f32_slice_not_a_multiple_of_4": safetensors_bytes(_header({"w": _f32([2], [0, 9])}), bytes(9)),
    "f4_odd_count": safetensors_bytes(_header({"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}), bytes(2)),
    "unknown_dtype": safetensors_bytes(
        _header({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}), bytes(16)
    ),
    "metadata_int_value": safetensors_bytes(_header({"__metadata__": {"epoch": 3}, "w": _f32([2], [0, 8])}), bytes(8)),
    "metadata_nested_value": safetensors_bytes(
        _header({"__metadata__": {"a": {"b": "c"}}, "w": _f32([2], [0, 8])}), bytes(8)
    ),
    "metadata_not_a_map": safetensors_bytes(_header({"__metadata__": "x", "w": _f32([2], [0, 8])}), bytes(8)),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_case19_bad_safetensors_are_typed_errors(write: FileWriter, case: str) -> None:
    path = write("bad.safetensors", BAD_SAFETENSORS[case])
    safe_open = pytest.importorskip("safetensors").safe_open
    with pytest.raises(Exception):  # noqa: B017 - the reference implementation refuses it too
        with safe_open(str(path), "pt") as reference:
            list(reference.keys())
    assert_one_line_error(scan(path), path)
    assert_inspect_refuses(path)
    with pytest.raises((SafetensorsError, UnknownFormatError)):
        read_checkpoint(str(path))


def test_case19_a_valid_safetensors_file_passes(write: FileWriter) -> None:
    path = write("good.safetensors", safetensors_file())
    outcome = scan(path)
    assert outcome.exit_code == 0 and only_file(outcome)["verdict"] == "safe"
    assert run_cli("inspect", "--format", "json", path).json()["tensors"][0]["shape"] == [2]


# -- case 20: storages on cuda:0, read on a machine without a GPU ---------------------------------

DEVICE_FILES: dict[str, Callable[[], bytes]] = {
    "zip_cuda0": lambda: checkpoint_zip([float_tensor("w", "0", 2, 3, location="cuda:0")]),
    "zip_cuda1_and_cpu": lambda: checkpoint_zip(
        [float_tensor("w", "0", 2, 3, location="cuda:1"), float_tensor("b", "1", 3)]
    ),
    "legacy_cuda0": lambda: legacy_checkpoint([float_tensor("w", "0", 2, 3, location="cuda:0")]).to_bytes(),
}


@pytest.mark.parametrize("case", sorted(DEVICE_FILES))
def test_case20_gpu_checkpoint_inspects_on_cpu(write: FileWriter, case: str) -> None:
    path = write("gpu.pt", DEVICE_FILES[case]())
    outcome = run_cli("inspect", "--format", "json", path)
    assert outcome.exit_code == 0, outcome.stderr
    devices = {t["key"]: t["device"] for t in outcome.json()["tensors"]}
    assert devices["w"] in ("cuda:0", "cuda:1")
    if "b" in devices:
        assert devices["b"] == "cpu"
    scanned = scan(path)
    assert scanned.exit_code == 0 and only_file(scanned)["verdict"] == "safe"
    torch = pytest.importorskip("torch")
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    assert list(loaded["w"].shape) == [2, 3]


# -- baseline: the builders make files torch accepts, so each case changes only what it names -----


def test_builders_make_checkpoints_torch_loads(write: FileWriter) -> None:
    torch = pytest.importorskip("torch")
    for name, data in (
        ("good.pt", zip_bytes(good_members())),
        ("good.pth", legacy_checkpoint([WEIGHT, BIAS]).to_bytes()),
    ):
        path = write(name, data)
        loaded = torch.load(path, weights_only=True)
        assert loaded["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        outcome = scan(path)
        assert outcome.exit_code == 0 and only_file(outcome)["verdict"] == "safe", outcome.stdout
        assert global_names(only_file(outcome)) <= {
            "collections.OrderedDict", "torch.FloatStorage", "torch._utils._rebuild_tensor_v2"
        }  # fmt: skip
