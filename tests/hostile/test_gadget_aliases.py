"""Known gadgets under another public name. `torch.utils.model_zoo.load_url` is
`torch.hub.load_state_dict_from_url`: it fetches a URL and torch.loads it with
weights_only=False. Only referenced, such a name was `needs-allowlist` with an
`add_safe_globals` line that would let any later file call it; called, an unknown call
with an `--allow` hint. torch's and numpy's file writers and npy readers likewise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import call_global, global_ref, shell_touch, torch_zip, whole
from support.hostile import FileWriter, assert_dangerous, assert_not_run, run_cli

_LOAD = "import sys, torch\ntorch.load(sys.argv[1], weights_only=False)\n"
ALIASES = [
    "torch.utils.model_zoo.load_url",
    "torch.save",
    "torch.serialization.save",
    "numpy.save",
    "numpy.savez",
    "numpy.savetxt",
    "numpy.lib.format.read_array",
    "numpy.lib.npyio.NpzFile",
    "torch.utils.data.datapipes.utils.decoder.basichandlers",
    "torch.multiprocessing.spawn",
    "torch.distributed.checkpoint.format_utils.torch_save_to_dcp",
    "torch.distributed.checkpoint.load",
]


@pytest.mark.slow
def test_load_url_of_a_file_url_runs_the_archive_it_fetches(write: FileWriter, marker: Path, tmp_path: Path) -> None:
    inner = write("inner.pt", torch_zip(whole(call_global("os", "system", shell_touch(marker)))))
    outer = write(
        "outer.pt",
        torch_zip(whole(call_global("torch.utils.model_zoo", "load_url", inner.as_uri(), str(tmp_path / "hub")))),
    )
    subprocess.run([sys.executable, "-c", _LOAD, str(outer)], capture_output=True, check=False, timeout=120)
    assert marker.exists(), "torch.load must fetch and run the inner archive"
    marker.unlink()
    report = assert_dangerous(outer, "torch.utils.model_zoo.load_url")
    assert report["allowlist"] is None
    assert "--allow" not in run_cli("scan", outer).stdout
    assert_not_run(marker)


@pytest.mark.parametrize("qualname", ALIASES)
def test_a_gadget_alias_is_dangerous_called_or_only_named(write: FileWriter, qualname: str) -> None:
    module, _, name = qualname.rpartition(".")
    for body in (call_global(module, name, "/nonexistent/x"), global_ref(module, name)):
        path = write("alias.pt", torch_zip(whole(body)))
        report = assert_dangerous(path, qualname)
        assert (report["allowlist"], report["imports"]) == (None, [])
        assert "--allow" not in run_cli("scan", path).stdout


@pytest.mark.slow
def test_the_datapipes_decoder_unpickles_what_it_is_given(write: FileWriter, marker: Path) -> None:
    """basichandlers('pickle', data) is pickle.loads(data): a second, unscanned pickle."""
    inner = whole(call_global("os", "system", shell_touch(marker)))
    decoder = "torch.utils.data.datapipes.utils.decoder"
    outer = write("decoder.pt", torch_zip(whole(call_global(decoder, "basichandlers", "pickle", inner))))
    subprocess.run([sys.executable, "-c", _LOAD, str(outer)], capture_output=True, check=False, timeout=120)
    assert marker.exists(), "torch.load must run the pickle the decoder is given"
    marker.unlink()
    assert_dangerous(outer, f"{decoder}.basichandlers")
    assert_not_run(marker)
