"""`--stats` of complex tensors, as torch defines them: no min/max, a complex mean, a
real std (`torch.std`), NaN/Inf counted per element (`torch.isnan`/`torch.isinf`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from conftest import cli_json

from ckpttool.formats import read_checkpoint
from ckpttool.ops.inspect import non_finite, tensor_stats
from ckpttool.ops.inspect import stats as stats_module
from ckpttool.weights import all_tensors

Cli = Callable[..., Result]
REL_TOL = 1e-9


def complex_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    with_specials = torch.randn(1000, dtype=torch.complex128, generator=generator) * 3 + (1 - 2j)
    with_specials[3] = complex(math.nan, 1.0)
    with_specials[5] = complex(1.0, math.inf)
    with_specials[7] = complex(math.nan, math.inf)  # both: torch counts it as NaN and as Inf
    with_specials[9:20] = 0
    return {
        "plain": torch.randn(6, 5, dtype=torch.complex64, generator=generator),
        "specials": with_specials,
        "single": torch.tensor([2 - 1j], dtype=torch.complex64),
    }


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "complex.pth"
    torch.save(complex_tensors(), path)
    return path


def assert_close(found: float, expected: float) -> None:
    assert math.isclose(found, expected, rel_tol=REL_TOL, abs_tol=1e-12), (found, expected)


@pytest.mark.parametrize("chunk", [None, 64])
def test_complex_stats_match_torch(saved: Path, chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk:
        monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", chunk)
    truth = torch.load(saved, weights_only=True)
    for named in all_tensors(read_checkpoint(str(saved)).root):
        tensor = truth[named.key].to(torch.complex128)
        finite = tensor[torch.isfinite(tensor)]
        found = tensor_stats(named)
        assert (found.min, found.max) == (None, None)
        assert isinstance(found.mean, complex)
        expected_mean = complex(finite.mean().item())
        assert_close(found.mean.real, expected_mean.real)
        assert_close(found.mean.imag, expected_mean.imag)
        if finite.numel() > 1:
            assert found.std is not None
            assert_close(found.std, finite.std().item())
        else:
            assert found.std is None
        assert (found.nan, found.inf) == (int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum()))
        assert non_finite(named.tensor) == (found.nan, found.inf)
        assert found.zeros == int((tensor == 0).sum()) / tensor.numel()


def test_complex_half_reads_too(tmp_path: Path) -> None:
    path = tmp_path / "chalf.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ComplexHalf is experimental in torch
        torch.save({"h": torch.randn(10, dtype=torch.complex64).to(torch.complex32)}, path)
        truth = torch.load(path, weights_only=True)["h"].to(torch.complex128)
    (named,) = all_tensors(read_checkpoint(str(path)).root)
    found = tensor_stats(named)
    assert isinstance(found.mean, complex) and found.std is not None
    assert_close(found.mean.real, truth.mean().real.item())
    assert_close(found.std, truth.std().item())


def test_cli_shows_no_min_max_and_a_complex_mean(cli: Cli, saved: Path) -> None:
    document = cli_json(cli("inspect", saved, "--stats", "--format", "json"))
    truth = torch.load(saved, weights_only=True)
    for row in document["stats"]:
        assert (row["min"], row["max"]) == (None, None)
        mean = complex(truth[row["key"]][torch.isfinite(truth[row["key"]])].to(torch.complex128).mean().item())
        assert_close(row["mean"]["real"], mean.real)
        assert_close(row["mean"]["imag"], mean.imag)
    table = cli("inspect", saved, "--stats").stdout.splitlines()
    plain = next(line.split() for line in table if line.startswith("plain"))
    assert plain[4:6] == ["-", "-"] and plain[6].startswith("(") and plain[6].endswith("j)")
