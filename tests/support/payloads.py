"""Code-execution payloads (FORMATS.md cases 11-16), each a pickle built by hand.

Every payload's only effect, were it ever run, would be to create `marker`.
`Payload.called` names the globals a scan must report as dangerous.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.builders import (
    LegacyFile,
    Op,
    Raw,
    ReducesTo,
    call,
    call_global,
    global_ref,
    python_touch,
    quoted_line,
    shell_touch,
    short_text,
    torch_zip,
    value,
    whole,
)


@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    called: tuple[str, ...]  # qualnames a scan must list as dangerous


# -- case 11: os.system / posix.system / subprocess in every protocol ------------------------


def dumped_payloads(marker: Path) -> list[Payload]:
    """CPython's own encoding of `os.system(...)` and `subprocess.Popen(...)`, protocols 0-5.

    `os.system` is `posix.system` on Linux, and is pickled under that name.
    """
    out = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        system = pickle.dumps(ReducesTo(os.system, shell_touch(marker)), protocol=protocol)
        popen = pickle.dumps(ReducesTo(subprocess.Popen, ["touch", str(marker)]), protocol=protocol)
        out.append(Payload(f"posix.system-protocol{protocol}", system, ("posix.system",)))
        out.append(Payload(f"subprocess.Popen-protocol{protocol}", popen, ("subprocess.Popen",)))
    return out


def handwritten_system_payloads(marker: Path) -> list[Payload]:
    """The same calls spelled the ways pickles can spell them."""
    command = shell_touch(marker)
    protocol0 = (  # GLOBAL, STRING, TUPLE, REDUCE: all text, no PROTO
        Op.GLOBAL + b"os\nsystem\n" + Op.MARK + Op.STRING + quoted_line(command) + Op.TUPLE + Op.REDUCE + Op.STOP
    )
    framed = (  # protocol 4: FRAME, STACK_GLOBAL from memoized strings
        b"\x80\x04"
        + short_text("os") + Op.MEMOIZE + short_text("system") + Op.MEMOIZE + Op.STACK_GLOBAL
        + short_text(command) + Op.TUPLE1 + Op.REDUCE + Op.STOP
    )  # fmt: skip
    return [
        Payload("os.system-GLOBAL-protocol0", protocol0, ("os.system",)),
        Payload(
            "os.system-GLOBAL-protocol2",
            whole(call_global("os", "system", command)),
            ("os.system",),
        ),
        Payload("nt.system", whole(call_global("nt", "system", command)), ("nt.system",)),
        Payload("os.system-STACK_GLOBAL-protocol4", framed, ("os.system",)),
        Payload(
            "subprocess.check_output",
            whole(call_global("subprocess", "check_output", ["touch", str(marker)])),
            ("subprocess.check_output",),
        ),
        Payload("os.popen", whole(call_global("os", "popen", command)), ("os.popen",)),
    ]


# -- case 12: builtins chains, INST and OBJ ----------------------------------------------------


def builtins_payloads(marker: Path) -> list[Payload]:
    source = python_touch(marker)
    import_os = call_global("builtins", "__import__", "os")
    getattr_system = call_global("builtins", "getattr", Raw(import_os), "system")
    compiled = call_global("builtins", "compile", source, "<payload>", "exec")
    return [
        Payload("builtins.exec", whole(call_global("builtins", "exec", source)), ("builtins.exec",)),
        Payload("builtins.eval", whole(call_global("builtins", "eval", source)), ("builtins.eval",)),
        Payload(  # Python 2's module name, which unpicklers map to builtins
            "__builtin__.eval",
            whole(call_global("__builtin__", "eval", source)),
            ("builtins.eval",),
        ),
        Payload(
            "builtins.compile-then-exec",
            whole(call_global("builtins", "exec", Raw(compiled))),
            ("builtins.exec", "builtins.compile"),
        ),
        Payload(  # getattr(__import__('os'), 'system')(command): REDUCE on a computed callable
            "builtins.getattr-__import__-chain",
            whole(call(getattr_system, shell_touch(marker))),
            ("builtins.getattr", "builtins.__import__"),
        ),
        Payload(  # INST: MARK, args, then `i module\nname\n` calls the class with them
            "INST-os.system",
            Op.MARK + Op.STRING + quoted_line(shell_touch(marker)) + Op.INST + b"os\nsystem\n" + Op.STOP,
            ("os.system",),
        ),
        Payload(
            "INST-subprocess.Popen",
            Op.MARK + Op.STRING + quoted_line(shell_touch(marker)) + Op.INST + b"subprocess\nPopen\n" + Op.STOP,
            ("subprocess.Popen",),
        ),
        Payload(  # OBJ: MARK, callable, args, OBJ calls items[0](*items[1:])
            "OBJ-builtins.exec",
            b"\x80\x02" + Op.MARK + global_ref("builtins", "exec") + value(source) + Op.OBJ + Op.STOP,
            ("builtins.exec",),
        ),
        Payload(
            "OBJ-on-a-computed-callable",
            b"\x80\x02" + Op.MARK + getattr_system + value(shell_touch(marker)) + Op.OBJ + Op.STOP,
            ("builtins.getattr",),
        ),
    ]


# -- case 13: names computed at load time --------------------------------------------------------


def computed_name_payloads(marker: Path) -> list[Payload]:
    """STACK_GLOBAL whose module or name is produced by a call: unresolvable statically."""
    join = call_global("builtins", "getattr", "", "join")  # the bound method ''.join
    joined_os = call(join, ["o", "s"])
    encoded = call_global("_codecs", "encode", "posix", "latin1")  # an allowlisted function
    command = value((shell_touch(marker),))
    return [
        Payload(
            "STACK_GLOBAL-on-joined-strings",
            b"\x80\x04" + joined_os + short_text("system") + Op.STACK_GLOBAL + command + Op.REDUCE + Op.STOP,
            ("builtins.getattr",),
        ),
        Payload(  # only allowlisted calls, yet the global it resolves is computed
            "STACK_GLOBAL-on-_codecs.encode",
            b"\x80\x04" + encoded + short_text("system") + Op.STACK_GLOBAL + command + Op.REDUCE + Op.STOP,
            (),
        ),
        Payload(  # the computed module name goes through the memo first
            "STACK_GLOBAL-on-a-memoized-computed-name",
            b"\x80\x04"
            + joined_os
            + Op.MEMOIZE
            + Op.POP
            + Op.BINGET
            + b"\x00"
            + short_text("system")
            + Op.STACK_GLOBAL
            + command
            + Op.REDUCE
            + Op.STOP,
            ("builtins.getattr",),
        ),  # fmt: skip
        Payload(  # calling the *result* of an allowlisted function
            "REDUCE-on-the-result-of-_codecs.encode",
            b"\x80\x02" + encoded + Op.EMPTY_TUPLE + Op.REDUCE + Op.STOP,
            (),
        ),
    ]


# -- case 14: gadgets in odd modules --------------------------------------------------------------


def code_object_fields(source: str) -> tuple[Any, ...]:
    """The positional arguments of `types.CodeType` (Python 3.11+) for compiled `source`."""
    code = compile(source, "<payload>", "exec")
    return (
        code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals,
        code.co_stacksize, code.co_flags, code.co_code, code.co_consts, code.co_names,
        code.co_varnames, code.co_filename, code.co_name, code.co_qualname, code.co_firstlineno,
        code.co_linetable, code.co_exceptiontable, code.co_freevars, code.co_cellvars,
    )  # fmt: skip


def _then_call(callable_ops: bytes, *args: Any) -> bytes:
    return whole(call(callable_ops, *args))


def gadget_payloads(marker: Path, inner_payload_file: Path) -> list[Payload]:
    """FORMATS.md case 14: gadgets that blocklist scanners missed; an allowlist catches them all."""
    shell, source = shell_touch(marker), python_touch(marker)
    code = Raw(call_global("types", "CodeType", *code_object_fields(source)))
    torch_load = Raw(global_ref("torch", "load"))
    partial_state = (torch_load, (str(inner_payload_file),), {"weights_only": False}, None)
    # functools.partial(torch.load, inner, weights_only=False), the way pickle writes a partial
    partial_load = (
        global_ref("functools", "partial") + value((torch_load,)) + Op.REDUCE
        + value(partial_state) + Op.BUILD
    )  # fmt: skip
    libc = call_global("ctypes", "CDLL", "libc.so.6")
    gadgets: list[tuple[str, bytes, tuple[str, ...]]] = [
        ("runpy._run_code", whole(call_global("runpy", "_run_code", source, {})), ()),
        # CVE-2025-1716: pip.main was missing from picklescan's blocklist.
        ("pip.main", whole(call_global("pip", "main", ["--log", str(marker), "--version"])), ()),
        ("pydoc.pipepager", whole(call_global("pydoc", "pipepager", "", shell)), ()),
        (
            "timeit.timeit",
            whole(call_global("timeit", "timeit", source, "pass", Raw(global_ref("time", "perf_counter")), 1)),
            (),
        ),
        ("cProfile.run", whole(call_global("cProfile", "run", source)), ()),
        ("pty.spawn", whole(call_global("pty", "spawn", ["touch", str(marker)])), ()),
        (
            "ctypes.CDLL",
            _then_call(call_global("builtins", "getattr", Raw(libc), "system"), shell.encode()),
            ("builtins.getattr",),
        ),
        (
            "pkgutil.resolve_name",
            _then_call(call_global("pkgutil", "resolve_name", "os:system"), shell),
            (),
        ),
        (
            "torch.utils.collect_env.run",
            whole(call_global("torch.utils.collect_env", "run", shell)),
            (),
        ),
        (
            "torch._inductor.codecache.compile_file",
            whole(
                call_global(
                    "torch._inductor.codecache",
                    "compile_file",
                    [],
                    str(marker),
                    ["touch", str(marker)],
                )
            ),
            (),
        ),
        ("functools.partial", whole(partial_load + Op.EMPTY_TUPLE + Op.REDUCE), ()),
        (
            "types.CodeType",
            _then_call(call_global("types", "FunctionType", code, {})),
            ("types.FunctionType",),
        ),
        (
            "cloudpickle.cloudpickle._make_function",
            _then_call(call_global("cloudpickle.cloudpickle", "_make_function", code, {}, "f", None, None)),
            ("types.CodeType",),
        ),
        (
            "urllib.request.urlopen",
            whole(call_global("urllib.request", "urlopen", f"file://{marker}")),
            (),
        ),
        ("_io.FileIO", whole(call_global("_io", "FileIO", str(marker), "w")), ()),
        ("builtins.open", whole(call_global("builtins", "open", str(marker), "w")), ()),
        # On no blocklist anywhere: only "called and not allowlisted" catches these.
        ("imaplib.IMAP4_stream", whole(call_global("imaplib", "IMAP4_stream", shell)), ()),
        ("doctest.debug_script", whole(call_global("doctest", "debug_script", source)), ()),
        (
            "test.support.script_helper.assert_python_ok",
            whole(call_global("test.support.script_helper", "assert_python_ok", "-c", source)),
            (),
        ),
    ]
    return [Payload(name, data, (name, *also)) for name, data, also in gadgets]


def inner_system_pickle(marker: Path) -> bytes:
    """What the functools.partial(torch.load, …) gadget would load: a plain os.system call."""
    return whole(call_global("posix", "system", shell_touch(marker)))


# -- SETITEM / APPEND on objects that are not dicts or lists (GHSA-63cw-57p8-fm3p) --------------


def container_abuse_payloads() -> list[Payload]:
    """torch < 2.10 let SETITEM(S) reach any object's __setitem__; torch now refuses these."""
    size = call_global("torch", "Size", (1, 2))
    new_set = call_global("builtins", "set")
    return [
        Payload(
            "SETITEMS-on-torch.Size",
            whole(size + Op.MARK + value("k") + value(1) + Op.SETITEMS),
            (),
        ),
        Payload("SETITEM-on-builtins.set", whole(new_set + value("k") + value(1) + Op.SETITEM), ()),
        Payload("APPEND-on-builtins.set", whole(new_set + value(1) + Op.APPEND), ()),
    ]


# -- wrapping a pickle the ways it reaches a user -------------------------------------------------

Wrapper = Callable[[bytes], bytes]

CONTAINERS: dict[str, tuple[str, Wrapper]] = {
    "raw": ("payload.bin", lambda data: data),
    "torch-zip": ("payload.pt", lambda data: torch_zip(data)),
    "legacy": ("payload.pth", lambda data: LegacyFile(data, []).to_bytes()),
}
