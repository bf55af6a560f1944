"""Whole torch optimizers, as `torch.save(optimizer)` pickles them: `cls.__new__` and BUILD.

`Optimizer.__setstate__` updates `__dict__`, adds the hook OrderedDicts an old pickle lacks,
wraps the class's `step` in torch's own profiling hook once, and calls `defaults.setdefault`;
each optimizer's override (torch/optim/*.py) then iterates `param_groups`, calls
`group.setdefault` with constants, looks each parameter up in `state` and converts a
`step` (`mu`, `eta`, `mu_product`) that is not a tensor with `float`/`torch.tensor`. None has
`__del__`. Those are methods of the state's containers and numbers, so the state must be
real dicts and lists of numbers, strings and objects torch's allowlist builds (tensors,
OrderedDicts): an object of another class there would have its methods called.
Learning-rate schedulers are not vetted: they may hold lambdas and `functools.partial`.
"""

from __future__ import annotations

from typing import Any

from ckpttool.pickle.allowlist import is_allowed
from ckpttool.pickle.objects import Call

_OPTIM = "torch.optim."
_CLASSES = (
    "optimizer.Optimizer", "sgd.SGD", "adam.Adam", "adamw.AdamW", "adagrad.Adagrad", "adadelta.Adadelta",
    "adamax.Adamax", "asgd.ASGD", "nadam.NAdam", "radam.RAdam", "rmsprop.RMSprop", "rprop.Rprop", "lbfgs.LBFGS",
    "sparse_adam.SparseAdam",
)  # fmt: skip
OPTIMIZERS: dict[str, str] = dict.fromkeys(
    (_OPTIM + name for name in _CLASSES),
    "a torch optimizer: __setstate__ stores its state, sets defaults on its param groups and turns numeric steps "
    "into tensors (its state form is checked); no __del__",
)
_MAX_DEPTH = 8
_SCALARS = (str, bytes, int, float, bool, type(None))


def _data(value: Any, seen: set[int], depth: int = 0) -> bool:
    """Numbers, strings, real containers of them, and objects torch's own allowlist builds.
    Each container is looked at once per check (`seen`): the memo can share one list many
    times over, and a walk of every path would never end."""
    if type(value) in _SCALARS:
        return True
    if isinstance(value, Call):
        return value.func_name is not None and is_allowed(value.func_name)
    if depth >= _MAX_DEPTH:
        return False
    if id(value) in seen:
        return True  # a False anywhere already failed the whole check
    seen.add(id(value))
    if type(value) in (list, tuple):
        return all(_data(v, seen, depth + 1) for v in value)
    return type(value) is dict and all(
        _data(k, seen, depth + 1) and _data(v, seen, depth + 1) for k, v in value.items()
    )


def _per_parameter(states: Any, seen: set[int]) -> bool:
    """`state`: a dict or defaultdict from parameter to that parameter's dict of tensors and numbers."""
    if isinstance(states, Call) and states.func_name == "collections.defaultdict":
        items: Any = dict(states.dictitems or ())
    elif type(states) is dict:
        items = states
    else:
        return False
    return all(_data(k, seen) and type(v) is dict and _data(v, seen) for k, v in items.items())


def optimizer_form(args: tuple[Any, ...], state: Any) -> str | None:
    if args or type(state) is not dict or not all(type(k) is str for k in state):
        return "expected an optimizer built empty, with a dict of attributes as its state"
    groups = state.get("param_groups")
    if type(state.get("defaults")) is not dict or type(groups) is not list or not all(type(g) is dict for g in groups):
        return "expected defaults as a dict and param_groups as a list of dicts"
    rest = {k: v for k, v in state.items() if k != "state"}
    seen: set[int] = set()
    if not _data(rest, seen) or not _per_parameter(state.get("state", {}), seen):
        return "expected an optimizer state of numbers, strings and tensors"
    return None
