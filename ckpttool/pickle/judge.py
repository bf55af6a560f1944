"""From decoded pickles to one verdict: how each global is used, and what that may run.

Verdicts, each with one meaning (per global, and per file as the worst of its globals):
- `safe`: on torch's `weights_only` allowlist;
- `needs-allowlist`: a class only instantiated and given state, a global only referenced,
  or a vetted callable (`ckpttool.pickle.vetted`) called with arguments of its vetted form;
- `unknown-call`: called, and neither vetted nor a known gadget (an installed class
  called with arguments, an enum member built from its value, a vetted callable given
  arguments outside its form); `allow` (from `--allow` or pyproject.toml) makes a name
  count as vetted;
- `dangerous`: a known gadget (`allowlist.danger_reason`, which `allow` never overrides),
  or anything the machine flagged as a problem: a name computed at load time, a parser
  differential, SETITEMS/APPENDS that call a method of a torch or vetted object, a limit
  or an error of the scan.

TorchScript: a `__torch__` class means code. Python's pickle cannot import one; only
torch.jit.load (and torch.load, which hands it TorchScript archives) gives it meaning, by
compiling the archive's `code/` and running it (`__setstate__` at load, methods when
called). That code is neither vetted nor a known gadget and can be weaponised
(CVE-2025-32434), so each such class is an unknown call until the user trusts it: by its
own name, or for a TorchScript archive (`TorchScript`) by allowing the archive's
top-level class (the class of the object data.pkl holds, whose code holds and calls the
rest). A `__torch__` class found elsewhere (a TorchScript archive inside a plain zip)
has no archive to trust and is allowed by its own name only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from ckpttool.pickle.allowlist import danger_reason, is_allowed
from ckpttool.pickle.call_ops import REBUILD_FROM_TYPE, WRAPPER_SUBCLASS, passed_arguments
from ckpttool.pickle.implicit import implicit_calls, is_method_call
from ckpttool.pickle.objects import NEWOBJ, Call, Global, PersistentRef
from ckpttool.pickle.reach import gadget_label, is_internal
from ckpttool.pickle.state import USE_BUILD, USE_CALL, USE_INSTANTIATE, USE_REFERENCE, Decoded, legacy_module_class
from ckpttool.pickle.vetted import VETTED, container_kind
from ckpttool.pickle.vetted_classes import CLASS_FORMS, SUBCLASS_FORMS, class_misfit, vetted_class

Verdict = Literal["safe", "needs-allowlist", "unknown-call", "dangerous"]
SAFE: Verdict = "safe"
NEEDS_ALLOWLIST: Verdict = "needs-allowlist"
UNKNOWN_CALL: Verdict = "unknown-call"
DANGEROUS: Verdict = "dangerous"
RANK: dict[str, int] = {SAFE: 0, NEEDS_ALLOWLIST: 1, UNKNOWN_CALL: 2, DANGEROUS: 3}
MAX_CALLS_SHOWN = 3
TORCHSCRIPT_MODULE = "__torch__"  # where TorchScript puts the classes of an archive's code/


@dataclass
class GlobalJudgement:
    module: str
    name: str
    uses: list[str]
    verdict: Verdict
    reason: str
    calls: list[str] = field(default_factory=list)  # how an unknown call is made: "Strategy('steps')"
    allowed_by: str | None = None  # where the user allowed it (--allow, a pyproject.toml)
    allow_name: str | None = None  # the name to --allow for it when not its own (a TorchScript archive's top)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class TorchScript:
    """What judging a TorchScript archive needs: `top`, the class of the object data.pkl
    holds (None when that is no `__torch__` object: then each class is allowed by its
    own name), and the `code/` record each `__torch__` module's code comes from."""

    top: str | None
    code: Mapping[str, str] = field(default_factory=dict)


_NO_ARCHIVE = TorchScript(None)


def is_torchscript_class(module: str) -> bool:
    return module == TORCHSCRIPT_MODULE or module.startswith(TORCHSCRIPT_MODULE + ".")


@dataclass
class Judgement:
    verdict: Verdict
    globals: list[GlobalJudgement]
    problems: list[str]


@dataclass
class _Tally:
    uses: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    call_count: int = 0
    misfits: list[str] = field(default_factory=list)
    passed_by: set[str] = field(default_factory=set)
    implicit: list[str] = field(default_factory=list)  # how the unpickler calls it unasked
    methods_called: bool = False  # the unpickler calls a method of an object of this class


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=RANK.__getitem__, default=SAFE)


def judge(
    pickles: Iterable[Decoded], allow: Mapping[str, str] | None = None, torchscript: TorchScript | None = None
) -> Judgement:
    """`allow` maps `module.name` to where the user allowed it; `torchscript` is given for
    a TorchScript archive."""
    allow = allow or {}
    tallies: dict[tuple[str, str], _Tally] = {}
    problems: list[str] = []
    for decoded in pickles:
        problems.extend(decoded.problems)
        for ref in decoded.globals:
            _tally(tallies, ref).uses.update(getattr(ref, "uses", ()))
        problems.extend(_judge_calls(decoded.calls, tallies, allow))
        for target, use, how in implicit_calls(decoded.calls):
            _note_implicit(_tally(tallies, target), use, how)
    judged = [_global_verdict(module, name, t, allow, torchscript) for (module, name), t in tallies.items()]
    verdict = DANGEROUS if problems else worst(g.verdict for g in judged)
    return Judgement(verdict, judged, problems)


def _tally(tallies: dict[tuple[str, str], _Tally], ref: Global) -> _Tally:
    key = (ref.module, ref.name)
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = _Tally()
    return tally


# copyreg's helpers that instantiate the class they are given (`_built_class`)
_CLASS_BUILDERS = frozenset({"copyreg.__newobj__", "copyreg.__newobj_ex__", "copyreg._reconstructor"})


def _only_counted(qualname: str) -> bool:
    """Whether a call of `qualname` only needs counting (a large state_dict has a call per
    tensor, of a few names): nothing vetted to fit, pass on or misfit, no class form, no
    class it builds."""
    return (
        qualname not in VETTED
        and qualname not in _CLASS_BUILDERS
        and qualname not in CLASS_FORMS
        and qualname not in (REBUILD_FROM_TYPE, WRAPPER_SUBCLASS)
    )


def _count_call(call: Call, tally: _Tally) -> None:
    tally.call_count += 1
    if len(tally.calls) < MAX_CALLS_SHOWN:
        tally.calls.append(render_call(call))


def _note_implicit(tally: _Tally, use: str, how: str) -> None:
    tally.uses.add(use)
    tally.methods_called = tally.methods_called or (use == USE_CALL and is_method_call(how))
    if use == USE_CALL and how not in tally.implicit and len(tally.implicit) < MAX_CALLS_SHOWN:
        tally.implicit.append(how)


def _judge_calls(calls: Iterable[Call], tallies: dict[tuple[str, str], _Tally], allow: Mapping[str, str]) -> list[str]:
    """`_judge_call` of each call, the work for a global done once: a state_dict of 50,000
    tensors holds 100,000 calls of two or three global records."""
    problems: list[str] = []
    counted: dict[int, _Tally] = {}  # the tally of each global record whose calls `_only_counted`, by id
    for call in calls:
        tally = counted.get(id(call.func))
        if tally is not None and call.kind != NEWOBJ and call.items is None and call.dictitems is None:
            _count_call(call, tally)
            continue
        problems.extend(_judge_call(call, tallies, allow))
        func = call.func
        if isinstance(func, Global) and _only_counted(func.qualname):
            counted[id(func)] = _tally(tallies, func)
    return problems


def _judge_call(call: Call, tallies: dict[tuple[str, str], _Tally], allow: Mapping[str, str]) -> list[str]:
    func = legacy_module_class(call.func)
    if not isinstance(func, Global):
        return []  # a callable computed inside the pickle: the machine made that a problem
    tally = _tally(tallies, func)
    if call.kind != NEWOBJ and call.items is None and call.dictitems is None and _only_counted(func.qualname):
        _count_call(call, tally)  # what the rest of this function comes to for such a call
        return []
    vetted = VETTED.get(func.qualname)
    if call.kind != NEWOBJ:
        misfit = vetted.fits(call.args) if vetted else None
        if vetted is None or (misfit and func.qualname not in allow):
            _count_call(call, tally)
        if misfit:
            tally.misfits.append(misfit)
    built, args = _built_class(call, func)
    form_misfit = class_misfit(built.qualname, args, call.state)
    if form_misfit:
        _tally(tallies, built).misfits.append(form_misfit)
    if func.qualname in (REBUILD_FROM_TYPE, WRAPPER_SUBCLASS):
        _subclass_misfit(call, func.qualname, tallies)
    if vetted:
        for value, use in vetted.passes(call.args):
            target = legacy_module_class(value)
            passed = _tally(tallies, target)
            passed.uses.add(use)
            if use == USE_CALL:
                passed.passed_by.add(func.qualname)
    return _container_problems(call, func.qualname)


def _built_class(call: Call, func: Global) -> tuple[Global, tuple[Any, ...]]:
    """The class a call instantiates and the arguments its __new__ gets (keywords as a last
    argument): protocols 0 and 1 spell `cls.__new__` through copyreg (`_reconstructor(cls,
    base, state)` passes `state` to a base other than object)."""
    cls = legacy_module_class(call.args[0]) if call.args else None
    if func.qualname == "copyreg.__newobj__" and isinstance(cls, Global):
        return cls, call.args[1:]
    if func.qualname == "copyreg.__newobj_ex__" and isinstance(cls, Global) and len(call.args) == 3:
        args, kwargs = call.args[1], call.args[2]
        return cls, (tuple(args) if type(args) is tuple else (args,)) + ((kwargs,) if kwargs else ())
    if func.qualname == "copyreg._reconstructor" and isinstance(cls, Global) and len(call.args) == 3:
        base = legacy_module_class(call.args[1])
        plain_object = isinstance(base, Global) and base.qualname == "builtins.object"
        return cls, () if plain_object else call.args[2:]
    return func, call.args + ((call.kwargs,) if call.kwargs else ())


def _subclass_misfit(call: Call, qualname: str, tallies: dict[tuple[str, str], _Tally]) -> None:
    """A vetted tensor subclass is vetted in the one form its rebuild takes, whether named as
    the rebuild's type or as the class the wrapper allocates (`_rebuild_wrapper_subclass`
    called alone, or by a rebuild that makes its result another type)."""
    _, passed = passed_arguments(qualname, call.args)
    wrapped = call.args if qualname == WRAPPER_SUBCLASS else passed
    named = [call.args[1]] if qualname == REBUILD_FROM_TYPE and len(call.args) > 1 else []
    named += [wrapped[0]] if type(wrapped) is tuple and wrapped else []
    classes = [c for c in map(legacy_module_class, named) if isinstance(c, Global) and c.qualname in SUBCLASS_FORMS]
    for cls in classes:
        misfit = SUBCLASS_FORMS[cls.qualname](call.args if qualname == REBUILD_FROM_TYPE else (), call.state)
        if misfit:
            _tally(tallies, cls).misfits.append(misfit)


def _container_problems(call: Call, qualname: str) -> list[str]:
    """SETITEMS/APPENDS on a call's result call its __setitem__/append. On an instance of a
    class the file names that is state for the class (needs-allowlist); on a torch or vetted
    object that is not that kind of container it is GHSA-63cw-57p8-fm3p's shape."""
    known = is_allowed(qualname) or qualname in VETTED
    if not known:
        return []
    kind = container_kind(qualname)
    problems = []
    if call.dictitems is not None and kind != "dict":
        problems.append(
            f"SETITEM(S) on the result of {qualname}(...) calls its __setitem__, which torch refuses "
            "(GHSA-63cw-57p8-fm3p)"
        )
    if call.items is not None and kind != "list":
        problems.append(f"APPEND(S) on the result of {qualname}(...) calls its append/extend, which torch refuses")
    return problems


def _global_verdict(
    module: str, name: str, tally: _Tally, allow: Mapping[str, str], torchscript: TorchScript | None
) -> GlobalJudgement:
    uses = sorted(tally.uses - {USE_BUILD}) or [USE_REFERENCE]
    allowed_by = allow.get(f"{module}.{name}")
    if is_torchscript_class(module) and not danger_reason(module, name):
        return _torchscript_class(module, name, uses, allowed_by, allow, torchscript or _NO_ARCHIVE)
    verdict, reason = _judged(module, name, tally, allowed_by)
    calls = []
    if verdict == UNKNOWN_CALL:
        more = tally.call_count - len(tally.calls)
        calls = tally.calls + ([f"... and {more} more"] if more > 0 else [])
        calls += [f"{module}.{name}: {how}" for how in tally.implicit]
    return GlobalJudgement(module, name, uses, verdict, reason, calls, allowed_by)


def _torchscript_class(
    module: str, name: str, uses: list[str], allowed_by: str | None, allow: Mapping[str, str], ts: TorchScript
) -> GlobalJudgement:
    """A class of the archive's TorchScript: its code runs unless the user trusts it, by
    name or through the archive's top-level class."""
    qualname = f"{module}.{name}"
    trusted_by = allow.get(ts.top) if ts.top else None
    if allowed_by:
        return GlobalJudgement(
            module, name, uses, NEEDS_ALLOWLIST, f"TorchScript code allowed by {allowed_by}", [], allowed_by
        )
    if trusted_by:
        reason = f"TorchScript code of an archive trusted by allowing {ts.top} ({trusted_by})"
        return GlobalJudgement(module, name, uses, NEEDS_ALLOWLIST, reason)
    hint = ts.top or qualname
    where = ts.code.get(module)
    code = f"the TorchScript code of {qualname}" + (f" ({where})" if where else "")
    reason = (
        "TorchScript: torch.jit.load (and torch.load) compiles and runs its code from code/, never vetted "
        f"(CVE-2025-32434); if you trust this archive's code, --allow {hint}"
    )
    return GlobalJudgement(module, name, uses, UNKNOWN_CALL, reason, [code], None, hint if hint != qualname else None)


def unknown_calls_by_allow(globals_: Iterable[GlobalJudgement]) -> dict[str, list[str]]:
    """The unknown calls, grouped under the name whose --allow accepts them: one hint for
    all the classes of a TorchScript archive."""
    grouped: dict[str, list[str]] = {}
    for g in sorted(globals_, key=lambda g: (g.allow_name is not None, g.qualname)):
        if g.verdict == UNKNOWN_CALL:
            grouped.setdefault(g.allow_name or g.qualname, []).extend(g.calls)
    return grouped


def _judged(module: str, name: str, tally: _Tally, allowed_by: str | None) -> tuple[Verdict, str]:
    qualname = f"{module}.{name}"
    danger = danger_reason(module, name)
    if danger:
        return DANGEROUS, danger + _never_overridden(allowed_by)
    if is_allowed(qualname):
        return SAFE, "on torch's weights_only allowlist"
    called = USE_CALL in tally.uses
    vetted = VETTED.get(qualname)
    class_why = None if called else vetted_class(qualname)
    class_only = USE_INSTANTIATE in tally.uses and not called
    label = None if vetted or class_why else gadget_label(module, name, class_only)
    if label:
        return DANGEROUS, label + _never_overridden(allowed_by)
    if allowed_by:
        return NEEDS_ALLOWLIST, f"allowed by {allowed_by}"
    if tally.misfits:
        return UNKNOWN_CALL, f"vetted only for other arguments: called with {tally.misfits[0]}"
    if (vetted or class_why or (called and vetted_class(qualname))) and tally.methods_called:
        return UNKNOWN_CALL, f"vetted for its construction and state only: {_unknown_call_reason(qualname, tally)}"
    if vetted:
        return NEEDS_ALLOWLIST, f"vetted: {vetted.why}"
    if class_why:
        return NEEDS_ALLOWLIST, f"vetted class: {class_why}"
    if called:
        return UNKNOWN_CALL, _unknown_call_reason(qualname, tally)
    if USE_INSTANTIATE in tally.uses and is_internal(module):
        return UNKNOWN_CALL, (
            "a class of the standard library, torch, numpy or a package torch installs, outside the vetted list: its "
            f"__new__, __setstate__ and __del__ run; if you trust it, --allow {qualname}"
        )
    if USE_INSTANTIATE in tally.uses:
        return NEEDS_ALLOWLIST, "a class instantiated and given state; not on torch's allowlist"
    return NEEDS_ALLOWLIST, "referenced only; not on torch's allowlist"


def _never_overridden(allowed_by: str | None) -> str:
    return f" (allowed by {allowed_by}, which never overrides a known gadget)" if allowed_by else ""


def _unknown_call_reason(qualname: str, tally: _Tally) -> str:
    by = f", as the callable that {', '.join(sorted(tally.passed_by))} calls" if tally.passed_by else ""
    how = f" ({'; '.join(tally.implicit)})" if tally.implicit else ""
    return f"called by the pickle{by}{how}: neither vetted nor a known gadget; if you trust it, --allow {qualname}"


# -- showing a call ------------------------------------------------------------------------------

_ARG_WIDTH = 60
_CALL_WIDTH = 160


def render_call(call: Call) -> str:
    """`module.name(args)` as the pickle would make the call, cut to a readable width."""
    func = legacy_module_class(call.func)
    name = func.qualname if isinstance(func, Global) else "<computed>"
    text = f"{name}({', '.join(_short(_arg(a, 0)) for a in call.args)})"
    return text if len(text) <= _CALL_WIDTH else text[: _CALL_WIDTH - 4] + "...)"


def _arg(value: Any, depth: int) -> str:
    value = legacy_module_class(value)
    if isinstance(value, Global):
        return value.qualname
    if isinstance(value, Call):
        return f"{value.func_name or '<computed>'}(...)"
    if isinstance(value, PersistentRef):
        return "<persistent id>"
    if isinstance(value, (str, bytes, int, float, complex, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return _container(value, depth + 1) if depth < 3 else "..."
    return f"<{type(value).__name__}>"


def _container(value: Any, depth: int) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{_arg(k, depth)}: {_arg(v, depth)}" for k, v in islice(value.items(), 4))
        return "{" + inner + (", ..." if len(value) > 4 else "") + "}"
    items = list(islice(value, 4))
    inner = ", ".join(_arg(i, depth) for i in items) + (", ..." if len(value) > 4 else "")
    if isinstance(value, tuple):
        return f"({inner}{',' if len(value) == 1 else ''})"
    return f"[{inner}]" if isinstance(value, list) else "{" + inner + "}"


def _short(text: str) -> str:
    return text if len(text) <= _ARG_WIDTH else text[: _ARG_WIDTH - 3] + "..."
