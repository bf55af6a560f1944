"""`optimizer`: the optimizer state a checkpoint holds, read without torch.

Every `{'state', 'param_groups'}` dict in the file is an optimizer state_dict
(`optimizer`, `optimizer_state_dict`, Lightning's `optimizer_states` list, ...).
For each: the param groups with every hyper-parameter, each parameter's state (step
and every state tensor's shape and dtype), and the optimizer type, inferred from
the group's hyper-parameter names (torch does not store the class). Parameter
indices are named from `--model` exactly (the order `model.parameters()` yields),
or from the file's own weights when that is unambiguous, which is said to be a guess.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ckpttool.checkpoint import PickledObject, TensorRef
from ckpttool.formats import read_checkpoint
from ckpttool.formats.dcp_megatron import optimizer_by_parameter
from ckpttool.ops.inspect.report import jsonable
from ckpttool.scalars import read_scalar
from ckpttool.weights import Weights, find_weights, is_optimizer_state, module_parameters, walk, weights_of

# (type, hyper-parameter names that identify it), most specific first: torch 2.x groups.
_SIGNATURES: list[tuple[str, frozenset[str]]] = [
    ("LBFGS", frozenset({"history_size", "line_search_fn"})),
    ("Adafactor", frozenset({"beta2_decay"})),
    ("NAdam", frozenset({"momentum_decay"})),
    ("Rprop", frozenset({"etas", "step_sizes"})),
    ("ASGD", frozenset({"lambd", "t0"})),
    ("Adagrad", frozenset({"lr_decay", "initial_accumulator_value"})),
    ("Adadelta", frozenset({"rho"})),
    ("RMSprop", frozenset({"alpha", "centered"})),
    ("SGD", frozenset({"momentum", "dampening", "nesterov"})),
    ("Adam", frozenset({"betas", "amsgrad"})),
]
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ParamState:
    index: Any
    name: str | None
    step: float | int | None
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerReport:
    path: str
    type: str | None
    inferred: bool
    param_groups: list[dict[str, Any]]
    state: list[ParamState]
    names: str | None = None  # "model" (exact), "file" (a guess from the weights), "keys" (the state's own), None
    notes: list[str] = field(default_factory=list)


def optimizers(path: str, model_params: list[tuple[str, tuple[int, ...]]] | None = None) -> list[OptimizerReport]:
    """Every optimizer state_dict in the file; `model_params` (name, shape) names their parameters exactly."""
    checkpoint = read_checkpoint(path)
    found = [(p, node) for p, node in walk(checkpoint.root) if is_optimizer_state(node)]
    megatron = optimizer_by_parameter(checkpoint.root) if checkpoint.format == "dcp" else None
    found += [("optimizer", megatron)] if megatron is not None else []
    candidates = _file_candidates(checkpoint.root)
    reports = []
    for where, state_dict in found:
        report = _describe(where, state_dict)
        if _keyed_by_name(report):
            for state in report.state:
                state.name = str(state.index)
            report.names = "keys"
        elif model_params is not None:
            _name(report, model_params, "model")
        elif candidates:
            _name_from_file(report, candidates)
        reports.append(report)
    return reports


_OPTIMIZER_FILE = re.compile(r"optimizer[\w.-]*\.(pt|pth|bin)")


def optimizer_files_beside(path: str) -> list[str]:
    """The optimizer files a model folder keeps beside its weights, by name: HF Trainer's
    `checkpoint-N/optimizer.pt`, accelerate's `save_state` `optimizer.bin` (`optimizer_1.bin`
    for a second one). None for a file."""
    if not os.path.isdir(path):
        return []
    names = sorted(n for n in os.listdir(path) if _OPTIMIZER_FILE.fullmatch(n))
    return [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]


def _keyed_by_name(report: OptimizerReport) -> bool:
    """torch.distributed.checkpoint.state_dict (FSDP, DCP) keys the state by parameter name."""
    params = [p for g in report.param_groups for p in g.get("params") or []]
    return bool(params) and all(isinstance(p, str) for p in params)


def _describe(where: str, state_dict: dict[str, Any]) -> OptimizerReport:
    groups = [{str(k): jsonable(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    states = [_param_state(index, value) for index, value in state_dict["state"].items()]
    kind = infer_type(groups, states)
    return OptimizerReport(where, kind, True, groups, states)


def _param_state(index: Any, value: Any) -> ParamState:
    state = ParamState(index, None, None)
    for key, item in value.items() if isinstance(value, dict) else []:
        if isinstance(item, TensorRef) and (item.numel != 1 or key != "step"):
            state.tensors[str(key)] = {"shape": list(item.shape), "dtype": item.dtype}
        elif key == "step":
            state.step = read_scalar(item) if isinstance(item, TensorRef) else jsonable(item)
        else:
            state.values[str(key)] = jsonable(item)
    return state


def infer_type(groups: list[dict[str, Any]], states: list[ParamState]) -> str | None:
    """The optimizer class, from the names its param groups carry."""
    keys = set().union(*(g.keys() for g in groups)) if groups else set()
    state_keys = {k for s in states for k in s.tensors}
    for name, signature in _SIGNATURES:
        if signature <= keys:
            return _refine(name, groups[0], state_keys)
    if "exp_inf" in state_keys:
        return "Adamax"
    if {"betas", "decoupled_weight_decay"} <= keys:
        return "RAdam"
    if {"betas", "weight_decay"} <= keys:
        return "Adamax"
    return "SparseAdam" if "betas" in keys else None


def _refine(name: str, group: dict[str, Any], state_keys: set[str]) -> str:
    if name == "SGD":
        return "SGD-momentum" if (group.get("momentum") or "momentum_buffer" in state_keys) else "SGD"
    if name == "Adam":
        # torch >= 2.6 records AdamW as Adam with decoupled weight decay.
        return "AdamW" if group.get("decoupled_weight_decay") else "Adam"
    return name


Params = list[tuple[str, tuple[int, ...]]]


def _file_candidates(root: Any) -> list[tuple[Params, str]]:
    """The parameters an optimizer in the file may be over, each with the note a guess from
    it carries: the weights first, then every other model the file holds at its top (a
    GAN's `{'G', 'D', 'optG', 'optD'}`, stylegan2's `{'g', 'd', 'g_ema', 'g_optim', 'd_optim'}`)."""
    weights = find_weights(root)
    candidates = []
    first, note = _file_parameters(root, weights)
    if first is not None:
        candidates.append((first, note))
    for key, value in root.items() if isinstance(root, dict) else ():
        other = weights_of(value, str(key)) if str(key) != weights.root else None
        params, note = _file_parameters(root, other) if other is not None else (None, "")
        if params is not None:
            candidates.append((params, f"{note}, of {str(key)!r}"))
    return candidates


def _name_from_file(report: OptimizerReport, candidates: list[tuple[Params, str]]) -> None:
    """Names from the weights when they fit; else from the one other model of the file that
    fits (none or several: not resolved, the weights' reason said)."""
    (params, note), others = candidates[0], candidates[1:]
    _name(report, params, "file")
    if report.names:
        report.notes.append(note)
        return
    fitting = []
    for params, note in others:
        trial = OptimizerReport(report.path, report.type, report.inferred, report.param_groups, [])
        trial.state = [ParamState(s.index, None, s.step, s.tensors, s.values) for s in report.state]
        _name(trial, params, "file")
        if trial.names:
            fitting.append((trial, note))
    if len(fitting) == 1:
        trial, note = fitting[0]
        report.state, report.names, report.notes = trial.state, trial.names, [note]


def _file_parameters(root: Any, weights: Weights) -> tuple[Params | None, str]:
    if weights.kind == "module":
        module = _at(root, weights.root)
        if isinstance(module, PickledObject):
            params = [(t.key, t.tensor.shape) for t in module_parameters(module)]
            return params, "names guessed from the pickled model's parameters, in model.parameters() order"
    if weights.kind == "state_dict":
        params = [
            (t.key, t.tensor.shape)
            for t in weights.tensors
            if not t.key.endswith(_BUFFER_SUFFIXES) and t.tensor.dtype in ("float32", "float16", "bfloat16", "float64")
        ]
        return params, "names guessed from the state_dict's floating tensors (buffers left out), in file order"
    return None, ""


def _at(root: Any, path: str | None) -> Any:
    from ckpttool.weights import resolve_path

    return resolve_path(root, path or "")


def _name(report: OptimizerReport, params: list[tuple[str, tuple[int, ...]]], source: str) -> None:
    """Index i is the i-th parameter when the groups list the model's parameters in order —
    and only when no other split of them into these groups fits the state's shapes, so a
    name is never given wrongly. Otherwise names stay unknown and a note says why."""
    groups = [list(g.get("params") or []) for g in report.param_groups]
    indices = [i for g in groups for i in g]
    if len(indices) != len(params):
        report.notes.append(
            f"{len(indices)} optimizer parameters but {len(params)} model parameters: names not resolved"
        )
        return
    # Indices are compared as text: a DCP checkpoint keeps state keys as strings ('0'),
    # its param_groups' params as ints, as torch's own dcp_to_torch_save returns them.
    shapes = {str(s.index): _state_shape(s) for s in report.state}
    in_order = {str(index): params[i] for i, index in enumerate(indices)}
    misfit = next((i for i in indices if shapes.get(str(i)) not in (None, tuple(in_order[str(i)][1]))), None)
    if misfit is not None:
        name, shape = in_order[str(misfit)]
        report.notes.append(
            f"state {misfit} has shape {list(shapes[str(misfit)] or ())} but parameter {name!r} is {list(shape)}: "
            "names not resolved"
        )
        return
    slots = [[shapes.get(str(i)) for i in g] for g in groups]
    if _count_splits([tuple(shape) for _, shape in params], slots) != 1:
        report.notes.append("parameters of equal shape could sit in other groups: names not resolved")
        return
    for state in report.state:
        found = in_order.get(str(state.index))
        state.name = found[0] if found else None
    report.names = source


def _state_shape(state: ParamState) -> tuple[int, ...] | None:
    shapes = {tuple(t["shape"]) for t in state.tensors.values() if t["shape"]}
    return shapes.pop() if len(shapes) == 1 else None


def _count_splits(
    params: list[tuple[int, ...]], slots: list[list[tuple[int, ...] | None]], budget: int = 100_000
) -> int:
    """How many ways (0, 1, or 2 meaning "more") the parameters, in order, can be dealt into
    the groups so that each group receives them in order and every known shape fits."""
    states: dict[tuple[int, ...], int] = {tuple(0 for _ in slots): 1}
    for shape in params:
        following: dict[tuple[int, ...], int] = {}
        for filled, ways in states.items():
            for j, group in enumerate(slots):
                k = filled[j]
                if k < len(group) and group[k] in (None, shape):
                    key = filled[:j] + (k + 1,) + filled[j + 1 :]
                    following[key] = min(2, following.get(key, 0) + ways)
        states = following
        if len(states) > budget:
            return 2  # too many ways to tell: treat as ambiguous
    return states.get(tuple(len(g) for g in slots), 0)
