"""What the diff, optimizer and check tests share: torch's own answers and file builders.

Each comparison command is measured against what torch says about the same objects:
`torch.equal` / `torch.allclose` per tensor for `diff`, `optimizer.state_dict()` for
`optimizer`, and `model.load_state_dict(sd, strict=False)` for `check --model`.
Checkpoints are built here with torch, in the test's temporary folder.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from click.testing import Result
from torch import nn

from support.groundtruth import FIXTURES_DIR, tensors_equal

SUPPORT_DIR = Path(__file__).resolve().parent
TUTORIAL_MODELS_FILE = FIXTURES_DIR / "tutorial_models.py"
CHECK_MODELS_FILE = SUPPORT_DIR / "checkmodels.py"

# float8 and float4 have no torch.equal kernel; float8 widens to float32 exactly, and
# the packed float4 pairs have no arithmetic at all, so only their bits can be compared.
_PACKED_DTYPES = frozenset({torch.float4_e2m1fn_x2})


def spec(file: Path, name: str) -> str:
    """A `--model` SPEC in the path form: `path/to/file.py:Name`."""
    return f"{file}:{name}"


def save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def output_json(result: Result) -> Any:
    """The JSON document a command printed on stdout (stderr kept apart)."""
    assert result.stdout, f"no output; stderr: {result.stderr!r}"
    return json.loads(result.stdout)


# -- diff: torch.equal and torch.allclose, per tensor ---------------------------------------------


def comparable(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in a form torch can compare element by element, values unchanged."""
    if tensor.layout != torch.strided:
        return comparable(tensor.to_dense())
    if tensor.is_quantized:
        return tensor.dequantize()
    if tensor.dtype.is_floating_point and tensor.dtype.itemsize == 1:
        return tensor.to(torch.float32)  # every float8 value is a float32 value
    return tensor


def torch_equal(a: torch.Tensor, b: torch.Tensor, equal_nan: bool = False) -> bool:
    """`torch.equal(a, b)` (NaN differs from NaN), or with NaN == NaN when `equal_nan`.

    Extended to the dtypes torch.equal has no kernel for: float8 compares by value,
    packed float4 and quantized tensors by their stored codes.
    """
    if a.shape != b.shape:
        return False
    if a.dtype in _PACKED_DTYPES or b.dtype in _PACKED_DTYPES:
        return tensors_equal(a, b)
    if a.is_quantized or b.is_quantized:
        return tensors_equal(a, b)
    x, y = comparable(a), comparable(b)
    if equal_nan and (x.is_floating_point() or x.is_complex()):
        return bool(torch.isclose(x, y, rtol=0, atol=0, equal_nan=True).all())
    return torch.equal(x, y)


def torch_allclose(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, equal_nan: bool = False) -> bool:
    """`torch.allclose` on float64 copies: torch refuses to mix dtypes, a cast copy does."""
    return torch.allclose(widened(a), widened(b), rtol=rtol, atol=atol, equal_nan=equal_nan)


@dataclass(frozen=True)
class LargestErrors:
    """The largest errors between two same-shaped tensors, as diff defines them:
    over the elements finite in both, |a-b| and |a-b|/|b| where b is not zero."""

    max_abs: float
    max_rel: float
    mismatched: int


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """float64 (complex128 for complex tensors): every value of the narrower types, exactly."""
    return tensor.to(torch.complex128) if tensor.is_complex() else tensor.double()


def value_errors(a: torch.Tensor, b: torch.Tensor, close: torch.Tensor) -> LargestErrors:
    da, db = widened(a).reshape(-1), widened(b).reshape(-1)
    finite = torch.isfinite(da) & torch.isfinite(db)
    error = (da - db).abs()[finite]
    scale = db.abs()[finite]
    max_abs = float(error.max()) if error.numel() else 0.0
    nonzero = scale > 0
    max_rel = float((error[nonzero] / scale[nonzero]).max()) if bool(nonzero.any()) else 0.0
    return LargestErrors(max_abs, max_rel, int((~close.reshape(-1)).sum()))


def elementwise_close(
    a: torch.Tensor, b: torch.Tensor, rtol: float = 0.0, atol: float = 0.0, equal_nan: bool = False
) -> torch.Tensor:
    """Which elements torch.equal (no tolerance) or torch.allclose would accept."""
    da, db = widened(a), widened(b)
    if rtol == 0 and atol == 0:
        close = da == db
        return close | (torch.isnan(da) & torch.isnan(db)) if equal_nan else close
    return torch.isclose(da, db, rtol=rtol, atol=atol, equal_nan=equal_nan)


def perturbed(state: Mapping[str, torch.Tensor], key: str, index: int, delta: float) -> dict[str, torch.Tensor]:
    """A copy of `state` where one element of `state[key]` moved by `delta`."""
    copy = {k: v.detach().clone() for k, v in state.items()}
    copy[key].view(-1)[index] += delta
    return copy


# -- optimizer: optimizer.state_dict() ----------------------------------------------------------


def jsonable(value: Any) -> Any:
    """An optimizer hyper-parameter as the JSON document carries it (tuples as lists,
    a one-element tensor as its value)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def state_tensors(param_state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state tensor but the step counter: shape and dtype name."""
    return {
        key: {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        for key, value in param_state.items()
        if isinstance(value, torch.Tensor) and key != "step"
    }


def step_of(param_state: Mapping[str, Any]) -> float | None:
    step = param_state.get("step")
    return None if step is None else float(step)


def parameter_index_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Index -> parameter name as the optimizer numbers them: group by group, in order."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {index: name_of[id(p)] for index, p in enumerate(params)}


def take_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Callable[[], torch.Tensor], steps: int = 2
) -> None:
    """Real training steps, so every state tensor and counter exists as after training."""
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch()).square().mean().backward()
        optimizer.step()


# -- check: model.load_state_dict(sd, strict=False) ----------------------------------------------

_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<key>\S+): copying a param with shape torch\.Size\(\[(?P<found>[^\]]*)\]\) "
    r"from checkpoint, the shape in current model is torch\.Size\(\[(?P<expected>[^\]]*)\]\)"
)


@dataclass
class LoadResult:
    """What `load_state_dict(sd, strict=False)` says: missing and unexpected keys, and
    the size mismatches it raises on (key -> (checkpoint shape, model shape))."""

    missing: list[str]
    unexpected: list[str]
    size_mismatch: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    def matched(self, expected: int) -> int:
        """Keys of the model's `expected` that load: present with the right shape."""
        return expected - len(self.missing) - len(self.size_mismatch)


def _shape(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def _with_metadata(items: list[tuple[str, torch.Tensor]], like: Mapping[str, Any]) -> OrderedDict[str, Any]:
    # BatchNorm reads the state_dict's `_metadata` versions to decide whether an absent
    # num_batches_tracked counts as missing; a copy keeps them.
    copy: OrderedDict[str, Any] = OrderedDict(items)
    metadata = getattr(like, "_metadata", None)
    if metadata is not None:
        copy._metadata = metadata  # type: ignore[attr-defined]
    return copy


def load_truth(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadResult:
    """torch's verdict on loading `state` into `model` (which is left unchanged).

    `load_state_dict` raises on size mismatches even with strict=False, before it
    returns the missing and unexpected keys; those come from a second load in which
    the mismatched entries are replaced by the model's own tensors.
    """
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mismatches: dict[str, tuple[list[int], list[int]]] = {}
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        for match in _SIZE_MISMATCH.finditer(str(exc)):
            mismatches[match["key"]] = (_shape(match["found"]), _shape(match["expected"]))
        if not mismatches:
            raise
    own = model.state_dict()
    patched = _with_metadata([(k, own[k] if k in mismatches else v) for k, v in state.items()], state)
    result = model.load_state_dict(patched, strict=False)
    model.load_state_dict(backup)
    return LoadResult(list(result.missing_keys), list(result.unexpected_keys), mismatches)


def renamed(state: Mapping[str, torch.Tensor], option: str) -> OrderedDict[str, Any]:
    """`state` after a key fix ckpttool suggests as a convert option."""
    kind, _, value = option.partition(" ")
    if kind == "--strip-prefix":
        items = [(k.removeprefix(value), v) for k, v in state.items()]
    elif kind == "--rename" and value.startswith("^="):
        items = [(value[2:] + k, v) for k, v in state.items()]
    else:
        raise AssertionError(f"not a key rename: {option}")
    return _with_metadata(items, state)


def dense_zeros_like(model: nn.Module) -> OrderedDict[str, Any]:
    """The model's state_dict keys, shapes, dtypes and module versions over one zero each:
    a checkpoint of a large architecture that costs a few bytes (the pickle alone gives
    the shapes). A saved state_dict keeps its `_metadata`; so does this one."""
    state = model.state_dict()
    items = [(k, torch.zeros((), dtype=v.dtype).expand(v.shape)) for k, v in state.items()]
    return _with_metadata(items, state)
