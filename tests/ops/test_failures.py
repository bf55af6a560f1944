"""Failures while writing: whatever goes wrong, nothing is left at DST and SRC is untouched.

A full disk (simulated in-process, and real under RLIMIT_FSIZE in a child), an exception
or an interrupt inside the writer, output or source bytes that change between writing and
verifying, a verification forced to fail, and unreadable sources. Each case checks that
no destination, shard, index or `.NAME.*.ckpttool-tmp` file remains, that an existing DST
replaced with --force keeps its old bytes, and that the source's sha256 is unchanged.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.cli import ERROR_PREFIX
from support.groundtruth import fixture_path, ground_truth_weights, tensors_equal, torch_load_trusted
from support.ops import (
    BY_NAME,
    assert_nothing_written,
    assert_same_tensors,
    copy_fixture,
    flip_byte,
    load_output,
    record_data_offset,
    run_ckpttool_process,
    temp_files,
    unchanged,
)

import ckpttool.ops.convert.converting as convert_module
import ckpttool.ops.rewrite.remapping as remap_module
from ckpttool.atomic import PendingOutput
from ckpttool.errors import CkptError, FileAccessError, FormatError, IntegrityError, VerificationError
from ckpttool.formats.zipwriter import ZipWriter
from ckpttool.ops.convert import ConvertOptions, convert
from ckpttool.ops.rewrite import parse_mapping, remap

SOURCE = BY_NAME["cnn_state_dict"]
GPU_SOURCE = BY_NAME["cuda0_state_dict"]
LEGACY_SOURCE = BY_NAME["legacy_state_dict"]


@dataclass(frozen=True)
class Operation:
    """One way of writing an output: what to run, and the destination it names."""

    name: str
    dst_name: str
    run: Callable[[Path, Path, bool], Any]  # (src, dst, force)
    source: dict[str, Any] = field(default_factory=lambda: SOURCE)


def _converter(**options: Any) -> Callable[[Path, Path, bool], Any]:
    def run(src: Path, dst: Path, force: bool) -> Any:
        return convert(str(src), str(dst), ConvertOptions(force=force, **options))

    return run


def _remapper(src: Path, dst: Path, force: bool) -> Any:
    return remap(str(src), str(dst), parse_mapping("cpu", ()), force=force)


OPERATIONS = [
    Operation("convert-safetensors", "out.safetensors", _converter(to="safetensors")),
    Operation("convert-pth", "out.pt", _converter(to="pth")),
    Operation("convert-cast", "out.safetensors", _converter(to="safetensors", dtype="float16")),
    Operation("convert-sharded", "model.safetensors", _converter(to="safetensors", shard_size=10_000)),
    Operation("convert-sharded-pth", "pytorch_model.bin", _converter(to="pth", shard_size=10_000)),
    # a source without CRC-32s: copied through a buffer that takes the CRC-32 the output is checked against
    Operation("convert-legacy-safetensors", "out.safetensors", _converter(to="safetensors"), LEGACY_SOURCE),
    Operation("convert-legacy-pth", "out.pt", _converter(to="pth"), LEGACY_SOURCE),
    Operation("remap", "out.pt", _remapper, GPU_SOURCE),
]
OPERATION_IDS = [op.name for op in OPERATIONS]
TENSOR_OPERATIONS = [op for op in OPERATIONS if op.name != "remap"]
# Outputs that hold the source's bytes as they are are verified by their CRC-32 against the
# source record's (one pass over the output, none more over the source); a cast is compared
# with the cast of the source as it is now.
COPYING_OPERATIONS = [op for op in TENSOR_OPERATIONS if op.name != "convert-cast"]
RECOMPUTING_OPERATIONS = [op for op in TENSOR_OPERATIONS if op.name == "convert-cast"]


def output_size(op: Operation, folder: Path) -> int:
    """How many bytes the operation writes when nothing goes wrong (every output together)."""
    folder.mkdir()
    op.run(fixture_path(op.source), folder / op.dst_name, False)
    return sum(p.stat().st_size for p in folder.iterdir())


def fails_cleanly(
    op: Operation, folder: Path, expected: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException:
    """Runs `op` into `folder`, which must fail with `expected` and leave nothing behind."""
    src = fixture_path(op.source)
    dst = folder / op.dst_name
    with unchanged(src), pytest.raises(expected) as caught:
        op.run(src, dst, False)
    assert_nothing_written(folder, dst)
    return caught.value


# -- a full disk, simulated in this process -------------------------------------------------------


class DiskQuota:
    """A disk with `free` bytes left, for ckpttool's output files only.

    Every way ckpttool writes is metered: buffered writes on the temporary file's handle,
    and `os.copy_file_range` / `os.pwrite` on its descriptor. A write that does not fit
    writes what fits, then fails with ENOSPC, as a real full disk does.
    """

    def __init__(self, free: int) -> None:
        self.free = free
        self.descriptors: set[int] = set()

    def take(self, wanted: int) -> int:
        granted = min(wanted, self.free)
        self.free -= granted
        return granted

    @staticmethod
    def full() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class MeteredFile:
    """A file handle whose writes draw on a DiskQuota; everything else goes to the file."""

    def __init__(self, handle: Any, quota: DiskQuota) -> None:
        self._handle, self._quota = handle, quota

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        granted = self._quota.take(len(view))
        self._handle.write(view[:granted])
        if granted < len(view):
            raise self._quota.full()
        return granted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@pytest.fixture
def disk_quota(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], DiskQuota]:
    def install(free: int) -> DiskQuota:
        quota = DiskQuota(free)
        real_fdopen, real_copy, real_pwrite = os.fdopen, os.copy_file_range, os.pwrite

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            quota.descriptors.add(fd)  # only ckpttool's temporary outputs are opened this way
            return MeteredFile(real_fdopen(fd, *args, **kwargs), quota)

        def copy_file_range(src: int, dst: int, count: int, *args: Any) -> int:
            if dst not in quota.descriptors:
                return real_copy(src, dst, count, *args)
            granted = quota.take(count)
            if granted == 0:
                raise quota.full()
            return real_copy(src, dst, granted, *args)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if fd not in quota.descriptors:
                return real_pwrite(fd, data, offset)
            view = memoryview(data).cast("B")
            granted = quota.take(len(view))
            if granted == 0:
                raise quota.full()
            return real_pwrite(fd, view[:granted], offset)

        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
        monkeypatch.setattr(os, "pwrite", pwrite)
        return quota

    return install


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.99], ids=["no-space", "10pct", "half", "all-but-the-end"])
def test_full_disk_midway_leaves_nothing(
    op: Operation, share: float, tmp_path: Path, disk_quota: Callable[[int], DiskQuota]
) -> None:
    size = output_size(op, tmp_path / "unlimited")
    disk_quota(int(size * share))
    error = fails_cleanly(op, tmp_path, OSError)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_full_disk_with_force_keeps_the_old_destination(
    op: Operation, tmp_path: Path, disk_quota: Callable[[int], DiskQuota]
) -> None:
    size = output_size(op, tmp_path / "unlimited")
    dst = tmp_path / op.dst_name
    dst.write_bytes(b"the previous output")
    disk_quota(size // 2)
    src = fixture_path(op.source)
    with unchanged(src), pytest.raises(OSError):
        op.run(src, dst, True)
    assert dst.read_bytes() == b"the previous output"
    assert temp_files(tmp_path) == []


# -- a full disk, for real: a file-size limit in a child process ----------------------------------


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Past the limit a write gets EFBIG instead of the process being killed by SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


CHILD_COMMANDS = {
    "convert-safetensors": (["convert"], "out.safetensors", SOURCE),
    "convert-pth": (["convert", "--to", "pth"], "out.pt", SOURCE),
    "remap": (["remap", "--device", "cpu"], "out.pt", GPU_SOURCE),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHILD_COMMANDS))
def test_file_size_limit_in_a_child_leaves_nothing(name: str, tmp_path: Path) -> None:
    args, dst_name, record = CHILD_COMMANDS[name]
    src, dst = fixture_path(record), tmp_path / dst_name
    with unchanged(src):
        child = run_ckpttool_process([*args, src, dst], preexec=_limit_file_size(20_000))
    assert child.returncode == 2, child.stderr
    assert_nothing_written(tmp_path, dst)


@pytest.mark.slow
def test_file_size_limit_is_reported_as_one_error_line(tmp_path: Path) -> None:
    # A full disk is the environment's failure, not ckpttool's: one `ckpttool: error:` line
    # that names the destination and the cause, not an "internal error".
    src, dst = fixture_path(SOURCE), tmp_path / "out.safetensors"
    child = run_ckpttool_process(["convert", src, dst], preexec=_limit_file_size(20_000))
    lines = child.stderr.splitlines()
    assert child.returncode == 2
    assert len(lines) == 1, child.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert "too large" in lines[0].lower() or "space" in lines[0].lower(), lines[0]


# -- an exception inside the writer ---------------------------------------------------------------


class WriterBroke(RuntimeError):
    pass


def fail_on_call(number: int, exception: BaseException, original: Callable[..., Any]) -> Callable[..., Any]:
    """`original`, except that its `number`-th call raises `exception`."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == number:
            raise exception
        return original(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("exception", [WriterBroke("writer broke"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_exception_in_the_writer_leaves_nothing(
    op: Operation, exception: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The third tensor record: after the output has been opened and partly written.
    if op.name.startswith("convert") and "pth" not in op.name:
        monkeypatch.setattr(convert_module, "_write_data", fail_on_call(3, exception, convert_module._write_data))
    else:
        monkeypatch.setattr(ZipWriter, "write_range", fail_on_call(3, exception, ZipWriter.write_range))
    fails_cleanly(op, tmp_path, type(exception))


def rename_cases() -> list[Any]:
    cases = [pytest.param(op, 1, id=f"{op.name}-first") for op in OPERATIONS]
    # Shards and their index land together: a rename failing after the first one
    # must not leave the shards already renamed.
    cases += [pytest.param(op, 2, id=f"{op.name}-second") for op in OPERATIONS if "sharded" in op.name]
    return cases


@pytest.mark.parametrize(("op", "failing_rename"), rename_cases())
def test_failure_while_renaming_into_place_leaves_nothing(
    op: Operation, failing_rename: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last step: a rename that fails (a read-only folder, a full directory, a race).
    denied = PermissionError(errno.EACCES, "permission denied")
    monkeypatch.setattr(os, "replace", fail_on_call(failing_rename, denied, os.replace))
    fails_cleanly(op, tmp_path, OSError)


# -- bytes that change between writing and verifying ----------------------------------------------


@pytest.fixture
def after_seal(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[[PendingOutput], None]], None]:
    """Runs a hook on each output right after it is flushed and before it is verified."""

    def install(hook: Callable[[PendingOutput], None]) -> None:
        original = PendingOutput.seal

        def seal(self: PendingOutput) -> None:
            original(self)
            hook(self)

        monkeypatch.setattr(PendingOutput, "seal", seal)

    return install


def corrupt_tensor_bytes(output: PendingOutput) -> None:
    """Flips one byte of tensor data in a freshly written output (not in an index json)."""
    temp = Path(output.temp)
    if output.final.endswith(".index.json"):
        return
    if output.final.endswith(".safetensors"):
        flip_byte(temp, temp.stat().st_size - 1)  # the last tensor's last byte
    else:
        flip_byte(temp, record_data_offset(temp, "data/0"))


@pytest.mark.parametrize("op", COPYING_OPERATIONS, ids=[op.name for op in COPYING_OPERATIONS])
def test_source_record_changed_after_its_copy_leaves_the_recorded_bytes(
    op: Operation, tmp_path: Path, after_seal: Callable[[Callable[[PendingOutput], None]], None]
) -> None:
    # The copy's CRC-32 is the one the source recorded (or, without one, the one taken as it
    # was copied): the output holds the bytes the source was saved with, whatever happens to
    # the source afterwards.
    (tmp_path / "src").mkdir()
    src = copy_fixture(op.source, tmp_path / "src")
    flipped: list[str] = []

    def flip_source_once(output: PendingOutput) -> None:
        if not flipped:
            # a legacy file ends with its last storage's bytes
            flip_byte(src, record_data_offset(src, "data/0") + 3 if zipfile.is_zipfile(src) else src.stat().st_size - 1)
            flipped.append(output.final)

    after_seal(flip_source_once)
    dst = tmp_path / op.dst_name
    op.run(src, dst, False)
    assert flipped
    outputs = sorted(p for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".json"))
    written: dict[str, Any] = {}
    for path in outputs:
        written.update(load_output(path, "safetensors" if path.suffix == ".safetensors" else "pth"))
    assert_same_tensors(written, ground_truth_weights(op.source))


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_output_corrupted_before_verification_is_caught(
    op: Operation, tmp_path: Path, after_seal: Callable[[Callable[[PendingOutput], None]], None]
) -> None:
    after_seal(corrupt_tensor_bytes)
    fails_cleanly(op, tmp_path, VerificationError)


@pytest.mark.parametrize("op", RECOMPUTING_OPERATIONS, ids=[op.name for op in RECOMPUTING_OPERATIONS])
def test_source_record_corrupted_during_the_run_is_caught(
    op: Operation, tmp_path: Path, after_seal: Callable[[Callable[[PendingOutput], None]], None]
) -> None:
    # The source is read for its metadata and copied; then a byte of its data/0 record
    # flips (a flaky disk, another writer). Verification compares with the source as it is
    # now and must notice that the output no longer matches it.
    (tmp_path / "src").mkdir()
    src = copy_fixture(op.source, tmp_path / "src")
    # The high byte of the first float32 (sign and exponent): a change that survives a
    # cast to float16, where a low mantissa byte would round away.
    offset = record_data_offset(src, "data/0") + 3
    flipped: list[str] = []

    def flip_source_once(output: PendingOutput) -> None:
        if not flipped:
            flip_byte(src, offset)
            flipped.append(output.final)

    after_seal(flip_source_once)
    dst = tmp_path / op.dst_name
    # Either the comparison notices, or the source record's CRC-32 no longer holds when it
    # is read back (a record already checked earlier in the run is not read twice).
    with pytest.raises((VerificationError, IntegrityError)):
        op.run(src, dst, False)
    assert flipped
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_record_corrupted_before_the_run_is_refused(to: str, tmp_path: Path) -> None:
    # torch does not check data records against their CRC-32: it loads the changed values.
    # ckpttool refuses to pass them on (tests/ops/test_crc.py covers every command).
    (tmp_path / "src").mkdir()
    src = copy_fixture(SOURCE, tmp_path / "src")
    flip_byte(src, record_data_offset(src, "data/0") + 3)
    corrupted = dict(torch_load_trusted(src))
    assert not all(tensors_equal(corrupted[k], t) for k, t in ground_truth_weights(SOURCE).items())
    dst = tmp_path / f"out.{'safetensors' if to == 'safetensors' else 'pt'}"
    with unchanged(src), pytest.raises(IntegrityError, match="data/0 fails its CRC-32"):
        convert(str(src), str(dst), ConvertOptions(to=to))
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize("op", TENSOR_OPERATIONS, ids=[op.name for op in TENSOR_OPERATIONS])
def test_forced_tensor_mismatch_leaves_nothing(op: Operation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both comparisons: bytes copied as they are, and bytes compared with a cast.
    monkeypatch.setattr(convert_module, "copy_matches_record", lambda source, copy: False)  # compare, not CRC
    monkeypatch.setattr(convert_module, "same_bytes", lambda a, b: False)
    monkeypatch.setattr(convert_module, "range_equals", lambda span, expected: False)
    monkeypatch.setattr(convert_module, "reads_back_as_copied", lambda written, crc: False)
    fails_cleanly(op, tmp_path, VerificationError)


def test_forced_mismatch_in_the_last_shard_removes_the_earlier_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    original = convert_module.same_bytes

    def fail_late(a: Any, b: Any) -> bool:
        nonlocal calls
        calls += 1
        return calls < 6 and original(a, b)  # cnn has 6 tensors; the last one mismatches

    monkeypatch.setattr(convert_module, "copy_matches_record", lambda source, copy: False)  # compare, not CRC
    monkeypatch.setattr(convert_module, "same_bytes", fail_late)
    fails_cleanly(OPERATIONS[3], tmp_path, VerificationError)


def test_forced_remap_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remap_module, "equivalent", lambda a, b, location=None: False)
    fails_cleanly(OPERATIONS[-1], tmp_path, VerificationError)


def test_forced_remap_record_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remap_module, "_crc", lambda storage: -1)
    fails_cleanly(OPERATIONS[-1], tmp_path, VerificationError)


# -- sources that cannot be read ------------------------------------------------------------------


def truncated_copy(record: dict[str, Any], folder: Path, keep: float) -> Path:
    src = copy_fixture(record, folder)
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * keep)])
    return src


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_source_is_refused_cleanly(op: Operation, keep: float, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    src = truncated_copy(op.source, folder, keep)
    dst = tmp_path / op.dst_name
    with unchanged(src), pytest.raises(CkptError):
        op.run(src, dst, False)
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_missing_source_is_refused_cleanly(op: Operation, tmp_path: Path) -> None:
    dst = tmp_path / op.dst_name
    with pytest.raises(FileAccessError):
        op.run(tmp_path / "missing.pt", dst, False)
    assert_nothing_written(tmp_path, dst)


def test_corrupt_pickle_is_refused_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    src = copy_fixture(SOURCE, folder)
    # data.pkl is the first record; damage its opcodes, keep the zip readable.
    data = bytearray(src.read_bytes())
    start = data.index(b"data.pkl") + len(b"data.pkl")
    data[start + 70 : start + 90] = b"\xff" * 20
    src.write_bytes(bytes(data))
    for op in (OPERATIONS[0], OPERATIONS[-1]):
        dst = tmp_path / op.dst_name
        with unchanged(src), pytest.raises(FormatError):
            op.run(src, dst, False)
        assert_nothing_written(tmp_path, dst)


def test_a_successful_run_after_a_failed_one_is_complete(
    tmp_path: Path, disk_quota: Callable[[int], DiskQuota], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing from the failed attempt lingers to confuse the next one.
    op = OPERATIONS[0]
    quota = disk_quota(100)
    fails_cleanly(op, tmp_path, OSError)
    quota.free = 1 << 40
    op.run(fixture_path(op.source), tmp_path / op.dst_name, False)
    assert_same_tensors(load_output(tmp_path / op.dst_name, "safetensors"), ground_truth_weights(op.source))
    assert temp_files(tmp_path) == []
