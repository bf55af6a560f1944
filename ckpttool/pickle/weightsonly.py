"""What `torch.load(weights_only=True)` does with a file, worked out without torch.

torch 2.14's weights_only unpickler (`torch/_weights_only_unpickler.py`) accepts a fixed
set of opcodes; GLOBALs on its allowlist or the user's (`add_safe_globals`), never from
`sys`/`os`/`posix`/`nt`; NEWOBJ and REDUCE on those only; BUILD only on instances of
those classes; SETITEMS only on exact dicts, OrderedDicts and Counters; APPENDS only on
lists; persistent ids of storages only. The answer is one of `loads` (as is),
`loads-after-allowlist` (after the printed `add_safe_globals` line), `refused` (and why:
no allowlist helps, or the one it would need names a known gadget) or `not-applicable`
(a format torch.load does not read, such as safetensors). Refusal is reported; it is
not danger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ckpttool.pickle.allowlist import is_allowed, is_blocked
from ckpttool.pickle.judge import DANGEROUS, Judgement
from ckpttool.pickle.objects import UNSET, Global
from ckpttool.pickle.state import Decoded, legacy_module_class
from ckpttool.pickle.vetted import VETTED
from ckpttool.pickle.vetted_dtensor import REGISTERED_BY_IMPORT

Result = Literal["loads", "loads-after-allowlist", "refused", "not-applicable"]
MAX_REASONS = 5
# Old numpy wrote these names; numpy 2 keeps them as aliases of numpy._core, whose objects
# say `numpy._core...` in __module__, so torch needs the (object, "pickled name") form.
_ALIASED_PREFIXES = ("numpy.core.",)
_WHERE_LOADED = ("__main__", "builtins")  # names defined (or built in) where torch.load runs
_BYTE = re.compile(r" \(pickle byte \d+\)$")


@dataclass
class WeightsOnly:
    result: Result
    reasons: list[str] = field(default_factory=list)
    allowlist: str | None = None  # the add_safe_globals line, for the names the file needs (or the import that is it)
    imports: list[str] = field(default_factory=list)  # statements to run before `allowlist`


def allowlist_effect(result: Result) -> str:
    """What the add_safe_globals line does for a file, in the words scan and check print
    before it: only `loads-after-allowlist` means torch.load(weights_only=True) then reads it."""
    if result == "loads-after-allowlist":
        return "to load with torch.load(weights_only=True):"
    return "globals to allowlist (torch.load(weights_only=True) still refuses the file):"


def not_applicable(reason: str) -> WeightsOnly:
    return WeightsOnly("not-applicable", [reason])


def emulate(pickles: Sequence[Decoded], judgement: Judgement, refusal: str | None = None) -> WeightsOnly:
    """`pickles`: those torch.load would unpickle; `refusal`: why torch.load refuses the
    file whatever its pickles hold (not a torch.save file, a TorchScript archive)."""
    needed = needed_globals(pickles)
    dangerous = {g.qualname for g in judgement.globals if g.verdict == DANGEROUS}
    reasons = [refusal] if refusal else []
    for decoded in pickles:
        reasons.extend(f"opcode {op} (pickle byte {at}) is not supported" for op, at in decoded.foreign_opcodes.items())
        reasons.extend(decoded.refusals)
    for module, name in needed:
        if is_blocked(module):
            reasons.append(f"GLOBAL {module}.{name}: module {module} is blocked even when allowlisted")
        elif f"{module}.{name}" in dangerous:
            reasons.append(f"needs {module}.{name} allowlisted, a known gadget: never allowlist it")
    line, imports = remedy(needed) if needed and not dangerous else (None, [])
    if reasons:
        return WeightsOnly("refused", _summarised(reasons), line, imports)
    return WeightsOnly("loads-after-allowlist" if needed else "loads", [], line, imports)


def needed_globals(pickles: Iterable[Decoded]) -> list[tuple[str, str]]:
    """Every global off torch's allowlist, and the classes BUILD meets that no global
    names (numpy.dtype(...) builds a numpy.dtypes class)."""
    needed: set[tuple[str, str]] = set()
    for decoded in pickles:
        needed.update((g.module, g.name) for g in decoded.globals if not is_allowed(g.qualname))
        for call in decoded.calls:
            if call.state is UNSET:
                continue  # no BUILD: no class to meet (a state_dict's 100,000 calls, mostly)
            func = legacy_module_class(call.func)
            vetted = VETTED.get(func.qualname) if isinstance(func, Global) else None
            made = vetted.result_class(call.args) if vetted and vetted.result_class else None
            if made:
                module, _, name = made.rpartition(".")
                needed.add((module, name))
    return sorted(needed)


def remedy(names: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """`allowlist_line` of the names no torch import allowlists, after the imports that do
    (`import torch.distributed.tensor` allowlists DTensor's classes; torch.load refuses
    them without it): the import alone when it covers every name."""
    modules = sorted({REGISTERED_BY_IMPORT[f"{m}.{n}"] for m, n in names if f"{m}.{n}" in REGISTERED_BY_IMPORT})
    rest = [(m, n) for m, n in names if f"{m}.{n}" not in REGISTERED_BY_IMPORT]
    imports = [f"import {module}" for module in modules]
    if not rest:
        return imports[-1], imports[:-1]
    line, more = allowlist_line(rest)
    return line, imports + more


def allowlist_line(names: Iterable[tuple[str, str]]) -> tuple[str, list[str]]:
    """The add_safe_globals call that lets torch.load(weights_only=True) read the file,
    and the import statements to run first. `from MODULE import NAME` reaches a class
    where a dotted path cannot: torch.optim deletes its submodule attributes
    (`torch.optim.adam`), and `torch.nn.utils.weight_norm` is the function that shadows
    its module."""
    names = list(names)
    taken = {"torch"} | {name.partition(".")[0] for module, name in names if module in _WHERE_LOADED}
    local: dict[tuple[str, str], str] = {}  # (module, top-level name) -> the name it is imported as
    shown = []
    for module, name in names:
        head, dot, rest = name.partition(".")  # a nested class is reached through its outer class
        if module in _WHERE_LOADED:
            reached = head
        elif (module, head) in local:
            reached = local[module, head]
        else:
            reached = head if head not in taken else f"{module.replace('.', '_')}_{head}"
            local[module, head] = reached
            taken.add(reached)
        qualname = f"{module}.{name}"
        expression = f"{reached}{dot}{rest}"
        shown.append(f'({expression}, "{qualname}")' if qualname.startswith(_ALIASED_PREFIXES) else expression)
    return f"torch.serialization.add_safe_globals([{', '.join(shown)}])", _import_statements(local)


def _import_statements(local: dict[tuple[str, str], str]) -> list[str]:
    """One `from MODULE import A, B as MODULE_B` per module."""
    by_module: dict[str, list[str]] = {}
    for (module, head), reached in local.items():
        by_module.setdefault(module, []).append(head if reached == head else f"{head} as {reached}")
    return [f"from {module} import {', '.join(names)}" for module, names in sorted(by_module.items())]


def _summarised(reasons: list[str]) -> list[str]:
    """One line per kind of refusal (the same message at many offsets counts once)."""
    seen: dict[str, int] = {}
    first: list[str] = []
    for reason in reasons:
        kind = _BYTE.sub("", reason)
        if kind not in seen:
            first.append(reason)
        seen[kind] = seen.get(kind, 0) + 1
    shown = first[:MAX_REASONS]
    if len(first) > MAX_REASONS:
        shown.append(f"and {len(first) - MAX_REASONS} more")
    return shown
