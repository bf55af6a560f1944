"""Tars as tarfile reads them, which is how torch.load reads a legacy tar checkpoint.

torch.load reads any file that does not open with a zip's local header and that
`tarfile.open` accepts as a legacy tar (`torch.serialization._legacy_load`): the last
member of each of the names `storages`, `tensors` and `pickle`, through `extract` and
`extractfile`, which follow a link to another member's bytes, expand a sparse file and
read a member of an unknown type as a regular file. A v7 tar has no `ustar` magic, and
its first bytes (a member's name) can open a pickle that swallows the rest of the file.
Each construction is built block by block, shown to run its payload under
`torch.load(weights_only=False)` in a child process, and shown to be `dangerous` for
`scan` with nothing run by ckpttool.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.builders import (
    HARDLINK,
    SYMLINK,
    Op,
    call_global,
    gnu_sparse_member,
    legacy_tar,
    legacy_tar_members,
    legacy_tar_with_a_view,
    proto,
    shell_touch,
    tar_end,
    tar_header,
    tar_link,
    tar_member,
    whole,
)
from support.hostile import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_inspect_refuses,
    assert_not_run,
    assert_scan_fails_closed,
    only_file,
    run_cli,
    scan,
    torch_accepts,
    torch_load_runs_it,
)


def system_body(marker: Path) -> bytes:
    """os.system(touch marker), without PROTO or STOP."""
    return call_global("os", "system", shell_touch(marker))


def legacy_members(pickle_member: bytes = b"") -> bytes:
    """The members of an empty legacy checkpoint, block by block, without the end blocks."""
    return b"".join(tar_member(name.encode(), data) for name, data in legacy_tar_members(pickle_member).items())


# -- a v7 tar whose first bytes are a pickle -------------------------------------------------


def v7_tar_opening_a_pickle(marker: Path) -> bytes:
    """A v7 tar (no magic) whose first member's name opens `PROTO, BINBYTES` covering the
    rest of the file but its last byte, a STOP: read from its first byte it is one pickle
    of bytes; tarfile reads its members, and torch.load runs the main pickle's payload."""
    members = legacy_members(whole(system_body(marker)))
    trailer = bytes(Op.STOP).rjust(512, b"\0")  # a last block tarfile stops at (invalid header)
    total = 512 + len(members) + len(trailer)
    name = proto(2) + Op.BINBYTES + struct.pack("<I", total - 7 - 1)
    return tar_header(name, 0, magic=b"") + members + trailer


def test_a_v7_tar_opening_with_a_pickle_is_read_as_torch_reads_it(write: FileWriter, marker: Path) -> None:
    data = v7_tar_opening_a_pickle(marker)
    assert isinstance(pickle.loads(data), bytes)  # pickle.load meets nothing but bytes
    path = write("v7.pt", data)
    assert_dangerous(path, "os.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)
    assert torch_load_runs_it(path, marker)


@pytest.mark.parametrize("head", [b"\x1f\x8b\x08", b"\x93NUMPY\x01\x00", b"x\x9c"])
def test_a_v7_tar_opening_like_another_container_is_read_as_a_tar(write: FileWriter, marker: Path, head: bytes) -> None:
    """A gzip, npy or zlib magic in the first name: torch.load still reads the tar."""
    path = write("polyglot.pt", tar_header(head, 0, magic=b"") + legacy_members(whole(system_body(marker))) + tar_end())
    assert_dangerous(path, "os.system")
    assert_not_run(marker)
    assert torch_load_runs_it(path, marker)


def test_the_pickle_a_tar_opens_with_is_scanned_too(write: FileWriter, marker: Path) -> None:
    """pickle.load of the same v7 tar reads its first bytes: a payload there is found."""
    name = proto(2) + system_body(marker) + Op.STOP
    path = write("polyglot.pt", tar_header(name, 0, magic=b"") + legacy_members() + tar_end())
    with tarfile.open(path) as tar:
        assert {"storages", "tensors", "pickle"} <= set(tar.getnames())
    assert_dangerous(path, "os.system")
    assert_not_run(marker)


def test_a_tar_whose_first_name_reads_as_a_plain_pickle_stays_clean(write: FileWriter) -> None:
    """`N.txt` opens with `None, STOP`: a pickle of nothing, no finding."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("N.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"notes"))
    outcome = scan(write("notes.tar", out.getvalue()))
    assert outcome.exit_code == 0, outcome.stdout
    assert only_file(outcome)["verdict"] == "safe"


# -- members torch.load reads elsewhere than in place -----------------------------------------


def pickle_linked_to_sys_info(marker: Path, typeflag: bytes) -> bytes:
    """A benign regular `pickle`, then a link of that name to `sys_info`, which holds the
    payload: getmember takes the last `pickle`, and extractfile follows it."""
    members = legacy_tar_members()
    members["sys_info"] = whole(system_body(marker))
    body = b"".join(tar_member(name.encode(), data) for name, data in members.items())
    return body + tar_link(b"pickle", b"sys_info", typeflag) + tar_end()


def pickle_of_an_unknown_type(marker: Path) -> bytes:
    """A second `pickle` of tar type `Z`, which tarfile reads as a regular file."""
    return legacy_members() + tar_member(b"pickle", whole(system_body(marker)), b"Z") + tar_end()


def sparse_pickle(marker: Path) -> bytes:
    members = legacy_tar_members()
    body = b"".join(tar_member(name.encode(), data) for name, data in members.items() if name != "pickle")
    return body + gnu_sparse_member(b"pickle", system_body(marker) + Op.STOP) + tar_end()


ELSEWHERE = {
    "hard link": lambda marker: pickle_linked_to_sys_info(marker, HARDLINK),
    "symbolic link": lambda marker: pickle_linked_to_sys_info(marker, SYMLINK),
    "unknown type": pickle_of_an_unknown_type,
    "sparse": sparse_pickle,
}


@pytest.mark.parametrize("how", ELSEWHERE)
def test_a_legacy_tar_member_read_elsewhere_fails_closed(write: FileWriter, marker: Path, how: str) -> None:
    path = write("old.tar", ELSEWHERE[how](marker))
    report = assert_dangerous(path)
    assert any("'pickle'" in p for p in report["problems"]), report["problems"]
    assert_inspect_harmless(path)
    assert_not_run(marker)
    assert torch_load_runs_it(path, marker)


def test_a_sparse_member_of_a_plain_tar_is_read_expanded(write: FileWriter, marker: Path) -> None:
    data = gnu_sparse_member(b"model.pkl", system_body(marker) + Op.STOP) + tar_end()
    path = write("download.tar", data)
    with tarfile.open(path) as tar:
        handle = tar.extractfile("model.pkl")
        assert handle is not None
        expanded = handle.read()
    assert_dangerous(path, "os.system")
    assert_not_run(marker)
    member = write("model.pkl", expanded)  # the member as tarfile hands it out, and pickle.load runs it
    subprocess.run([sys.executable, "-m", "pickle", str(member)], check=False, timeout=60, capture_output=True)
    assert marker.exists()


def test_a_member_of_an_unknown_type_in_a_plain_tar_is_scanned(write: FileWriter, marker: Path) -> None:
    path = write("download.tar", tar_member(b"model.pkl", whole(system_body(marker)), b"Z") + tar_end())
    assert_dangerous(path, "os.system")
    assert_not_run(marker)


# -- storage views ------------------------------------------------------------------------------


@pytest.mark.parametrize("view", [(2, 1, "1", 2), (2, 1, 0, None), (2, 1, 0, -1), (2, 1, 0, 1 << 70), (2, [1], 0, 1)])
def test_a_storage_view_that_does_not_fit_is_a_typed_error(write: FileWriter, view: tuple[object, ...]) -> None:
    path = write("viewed.tar", legacy_tar_with_a_view(view))
    assert_inspect_refuses(path)
    assert_scan_fails_closed(path)


# -- weights_only ---------------------------------------------------------------------------------


def test_weights_only_refuses_every_legacy_tar(write: FileWriter) -> None:
    path = write("old.tar", legacy_tar(legacy_tar_members()))
    assert not torch_accepts(path)
    report = only_file(run_cli("scan", "--format", "json", path))
    assert report["verdict"] == "safe"
    assert report["weights_only"]["result"] == "refused"
    assert any("legacy .tar" in r for r in report["weights_only"]["reasons"])
