"""Verdicts: one meaning each, and no gadget reachable through a vetted callable.

Each vetted callable is tried with the arguments an attack would give it: a dangerous
global where it calls an argument, an unknown one, an object whose methods it would
call, a count that allocates. None of those may come out `safe` or `needs-allowlist`.
The pickles are built opcode by opcode and only ever decoded by ckpttool.
"""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch.jit._pickle
from support.judging import call, glob, judged, new, num, text, verdict_of

from ckpttool.pickle import decode
from ckpttool.pickle.allowlist import PURE_MEMBERS
from ckpttool.pickle.judge import Judgement, TorchScript, judge, unknown_calls_by_allow
from ckpttool.pickle.vetted import NUMPY_DTYPE_CLASSES, VETTED, numpy_dtype_class

NONE = b"N"
EMPTY_LIST = b"]"
EMPTY_DICT = b"}"
DTYPE_F8 = call("numpy.dtype", text("f8"), b"\x89", b"\x88")


# -- benign pickles, as Python writes them -------------------------------------------------------


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize(
    ("obj", "verdict"),
    [
        (["a", "b", "c"], "safe"),  # picklescan's benign0_v0 / benign0_v4
        (collections.OrderedDict(), "safe"),
        (collections.OrderedDict(a=1), "safe"),
        ({"x": (1, 2.5, None, True, b"raw")}, "safe"),
        (range(100), "needs-allowlist"),  # builtins.range(0, 100, 1): vetted
        (collections.defaultdict(list, {"k": [1]}), "needs-allowlist"),
        (collections.deque([1, 2], maxlen=3), "needs-allowlist"),
        (slice(1, 5), "needs-allowlist"),
        (np.arange(3.0), "needs-allowlist"),
        (np.float64(0.25), "needs-allowlist"),
        (np.array(["a", "bc"]), "needs-allowlist"),
        (np.zeros(2, dtype=[("a", "f4"), ("b", "i8")]), "needs-allowlist"),
    ],
    ids=repr,
)
def test_benign_pickles_of_every_protocol(obj: object, verdict: str, protocol: int) -> None:
    decoded = decode(pickle.dumps(obj, protocol=protocol))
    judgement = judge([decoded])
    assert (judgement.verdict, judgement.problems) == (verdict, [])


@pytest.mark.parametrize("protocol", range(6))
def test_frozensets_are_a_vetted_call_or_an_opcode(protocol: int) -> None:
    # builtins.frozenset([...]) below protocol 4, the FROZENSET opcode from 4 on.
    judgement = judge([decode(pickle.dumps(frozenset({1, 2}), protocol=protocol))])
    assert judgement.verdict == ("needs-allowlist" if protocol < 4 else "safe")


def test_an_opcode_torch_refuses_is_no_problem() -> None:
    decoded = decode(pickle.dumps({"a": "b"}, protocol=4))
    assert decoded.foreign_opcodes  # FRAME, SHORT_BINUNICODE, MEMOIZE ...
    assert judge([decoded]).verdict == "safe"


# -- classes, calls and the known gadgets ----------------------------------------------------------


def test_a_class_given_state_needs_an_allowlist() -> None:
    judgement = judged(new("argparse.Namespace") + EMPTY_DICT + b"b")
    assert judgement.verdict == "needs-allowlist"
    assert judgement.globals[0].uses == ["instantiate"]


def test_a_call_of_an_unknown_callable_is_named_with_its_arguments() -> None:
    judgement = judged(call("mypackage.config.Strategy", text("steps")))
    (strategy,) = judgement.globals
    assert (judgement.verdict, strategy.verdict) == ("unknown-call", "unknown-call")
    assert strategy.calls == ["mypackage.config.Strategy('steps')"]
    assert "--allow mypackage.config.Strategy" in strategy.reason


def test_allow_makes_a_call_vetted_and_says_where() -> None:
    allow = {"mypackage.config.Strategy": "--allow"}
    judgement = judged(call("mypackage.config.Strategy", text("steps")), allow)
    (strategy,) = judgement.globals
    assert (judgement.verdict, strategy.allowed_by, strategy.calls) == ("needs-allowlist", "--allow", [])


@pytest.mark.parametrize(
    "gadget", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen", "runpy._run_code"]
)
def test_allow_never_overrides_a_known_gadget(gadget: str) -> None:
    judgement = judged(call(gadget, text("true")), {gadget: "--allow"})
    assert judgement.verdict == "dangerous"
    assert "never overrides" in judgement.globals[0].reason


@pytest.mark.parametrize(
    "gadget",
    [
        "os.system", "nt.system", "subprocess.check_output", "builtins.exec", "builtins.getattr",
        "builtins.__import__", "builtins.open", "pty.spawn", "ctypes.CDLL", "importlib.import_module",
        "pickle.loads", "shutil.rmtree", "socket.create_connection", "webbrowser.open", "pip.main",
        "pydoc.pipepager", "timeit.timeit", "cProfile.run", "code.interact", "torch.load",
        "torch.jit.load", "torch.utils.collect_env.run", "torch._inductor.codecache.compile_file",
        "functools.partial", "types.CodeType", "types.FunctionType", "cloudpickle.cloudpickle._make_function",
        "urllib.request.urlopen", "_io.FileIO", "torch.storage._load_from_bytes", "numpy.load",
        "torch.fx.graph_module.reduce_graph_module", "builtins.object.__subclasses__", "builtins.__dict__",
    ],
)  # fmt: skip
def test_known_gadgets_are_dangerous_called_or_not(gadget: str) -> None:
    assert judged(call(gadget, text("x"))).verdict == "dangerous"
    assert judged(glob(gadget)).verdict == "dangerous"  # only referenced: still labelled


# -- no gadget through a vetted callable -------------------------------------------------------------

UNKNOWN = "mylib.hooks.run"


@pytest.mark.parametrize(
    ("body", "verdict", "blamed"),
    [
        # defaultdict calls its default_factory on a missing key, after loading.
        (call("collections.defaultdict", glob("os.system")), "dangerous", "os.system"),
        (call("collections.defaultdict", glob(UNKNOWN)), "unknown-call", UNKNOWN),
        (call("collections.defaultdict", call(UNKNOWN)), "unknown-call", "collections.defaultdict"),
        (call("collections.defaultdict", new("mylib.Callable")), "unknown-call", "collections.defaultdict"),
        # copyreg._reconstructor runs base.__new__ and base.__init__ for a base other than object.
        (call("copyreg._reconstructor", glob("mylib.M"), glob("subprocess.Popen"), text("ls")), "dangerous", None),
        (call("copyreg._reconstructor", glob("mylib.M"), glob(UNKNOWN), NONE), "unknown-call", UNKNOWN),
        (
            call("copyreg._reconstructor", glob("mylib.M"), call(UNKNOWN), NONE),
            "unknown-call",
            "copyreg._reconstructor",
        ),
        (call("copyreg.__newobj__", glob("subprocess.Popen")), "dangerous", "subprocess.Popen"),
        (call("copyreg.__newobj__", call(UNKNOWN)), "unknown-call", "copyreg.__newobj__"),
        # numpy: an array subtype is instantiated; dtype and scalar take only data.
        (call("numpy._core.multiarray._reconstruct", glob("os.system"), b")", text("b")), "dangerous", "os.system"),
        (call("numpy._core.multiarray._reconstruct", call(UNKNOWN), b")", text("b")), "unknown-call", None),
        (call("numpy.dtype", new("mylib.Spec")), "unknown-call", "numpy.dtype"),
        (call("numpy.dtype", glob(UNKNOWN)), "unknown-call", "numpy.dtype"),
        (call("numpy._core.multiarray.scalar", glob(UNKNOWN), text("x")), "unknown-call", None),
        (call("numpy._core.numeric._frombuffer", text("x"), glob(UNKNOWN), b")", text("C")), "unknown-call", None),
        # pure constructors would iterate, convert or hash an object: its class's code.
        (call("builtins.list", new("mylib.Iterable")), "unknown-call", "builtins.list"),
        (call("builtins.dict", glob(UNKNOWN)), "unknown-call", "builtins.dict"),
        (call("builtins.int", new("mylib.Number")), "unknown-call", "builtins.int"),
        (call("builtins.str", glob("os.environ")), "dangerous", None),
        (call("collections.deque", new("mylib.Iterable")), "unknown-call", "collections.deque"),
        (call("builtins.range", glob(UNKNOWN)), "unknown-call", "builtins.range"),
        # bytes(n) allocates n bytes of the file's choosing.
        (call("builtins.bytes", num(2**31 - 1)), "unknown-call", "builtins.bytes"),
        # SETITEM(S)/APPEND(S) call a method of the object: only the matching container may take them.
        (DTYPE_F8 + text("k") + num(1) + b"s", "dangerous", None),
        (call("collections.defaultdict", NONE) + num(1) + b"a", "dangerous", None),
        (call("builtins.list", EMPTY_LIST) + text("k") + num(1) + b"s", "dangerous", None),
        (call("torch.Size", EMPTY_LIST) + text("k") + num(1) + b"s", "dangerous", None),
    ],
)
def test_no_gadget_through_a_vetted_callable(body: bytes, verdict: str, blamed: str | None) -> None:
    judgement = judged(body)
    assert judgement.verdict == verdict, (judgement.globals, judgement.problems)
    if blamed is not None:
        assert verdict_of(judgement, blamed) == verdict


@pytest.mark.parametrize(
    "body",
    [
        call("collections.defaultdict", glob("builtins.list")),
        call("collections.defaultdict", NONE),
        call("collections.defaultdict", glob("builtins.int"), EMPTY_DICT),
        call("copyreg._reconstructor", glob("mylib.M"), glob("builtins.object"), NONE),
        call("copyreg._reconstructor", glob("mylib.M"), glob("builtins.dict"), EMPTY_DICT),
        call("copyreg.__newobj__", glob("mylib.M")),
        call("numpy._core.multiarray._reconstruct", glob("numpy.ndarray"), b"J\x00\x00\x00\x00\x85", text("b")),
        call("numpy.core.multiarray.scalar", DTYPE_F8, call("_codecs.encode", text("\x00" * 8), text("latin1"))),
        call("builtins.bytes", call("_codecs.encode", text("ab"), text("latin1"))),
        call("builtins.range", num(0), num(10), num(2)),
        call("collections.defaultdict", glob("builtins.list")) + text("k") + EMPTY_LIST + b"s",
        call("collections.deque", EMPTY_LIST, num(3)) + num(1) + b"a",
    ],
)
def test_the_vetted_forms_need_only_an_allowlist(body: bytes) -> None:
    judgement = judged(body)
    assert (judgement.verdict, judgement.problems) == ("needs-allowlist", [])


def test_every_vetted_callable_says_why() -> None:
    assert all(v.why and v.why[0].islower() for v in VETTED.values())


def test_a_factory_is_judged_as_a_call_and_says_by_whom() -> None:
    (factory,) = [g for g in judged(call("collections.defaultdict", glob(UNKNOWN))).globals if g.qualname == UNKNOWN]
    assert factory.uses == ["call"]
    assert "collections.defaultdict" in factory.reason


def test_legacy_module_ids_judge_their_class() -> None:
    # NEWOBJ on ('module', cls, file, source): torch's legacy loader hands back cls.
    pid = b"(" + text("module") + glob("mylib.Net") + text("net.py") + text("src") + b"tQ"
    judgement = judged(pid + b")\x81" + EMPTY_DICT + b"b")
    assert (judgement.verdict, judgement.problems) == ("needs-allowlist", [])
    assert judgement.globals[0].uses == ["instantiate"]


# -- numpy's dtype classes ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["?", "b", "B", "h", "H", "i", "I", "l", "L", "e", "f", "d", "g", "F", "D", "G", "O"])
def test_dtype_class_table_matches_numpy(code: str) -> None:
    """What numpy.dtype(typestr) builds, from the type string its __reduce__ writes."""
    dtype = np.dtype(code)
    typestr = dtype.__reduce__()[1][0]
    assert typestr in NUMPY_DTYPE_CLASSES
    assert numpy_dtype_class((typestr,)) == f"{type(dtype).__module__}.{type(dtype).__name__}"


@pytest.mark.parametrize("code", ["U5", "S3", "V4", "M8[s]", "m8[D]"])
def test_sized_dtype_classes_match_numpy(code: str) -> None:
    dtype = np.dtype(code)
    typestr = dtype.__reduce__()[1][0]
    assert numpy_dtype_class((typestr,)) == f"{type(dtype).__module__}.{type(dtype).__name__}"


# -- TorchScript: the torch.jit._pickle builders, and the archive's own code ----------------------------

BUILDERS = sorted(q for q in VETTED if q.startswith("torch.jit."))


def test_the_builders_are_the_only_torch_jit_names_exempt() -> None:
    assert set(BUILDERS) == PURE_MEMBERS == {
        f"torch.jit._pickle.{n}"
        for n in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                  "build_tensor_from_id", "restore_type_tag")
    }  # fmt: skip


def test_the_builders_hand_back_what_they_are_given() -> None:
    """torch's own functions, as pickle.load would call them: each returns its argument."""
    marker: list[object] = [1, 2]
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist"):
        assert getattr(torch.jit._pickle, name)(marker) is marker
    assert torch.jit._pickle.build_tensor_from_id(7) == 7
    assert torch.jit._pickle.restore_type_tag(marker, "List[int]") is marker


@pytest.mark.parametrize(
    "gadget",
    ["torch.jit.load", "torch.jit._pickle.build_module", "torch.jit._script.RecursiveScriptModule",
     "torch.jit._serialization.load", "torch.jit.frontend.get_jit_def", "torch.jit._pickle.__builtins__"],
)  # fmt: skip
def test_the_rest_of_torch_jit_stays_a_known_gadget(gadget: str) -> None:
    assert judged(call(gadget, text("x")), {gadget: "--allow"}).verdict == "dangerous"


@pytest.mark.parametrize(
    "body",
    [
        call("torch.jit._pickle.build_intlist", b"(" + num(1) + num(2) + b"l"),
        call("torch.jit._pickle.build_doublelist", EMPTY_LIST),
        call("torch.jit._pickle.build_boollist", b"(\x88\x89l"),
        call("torch.jit._pickle.build_tensorlist", EMPTY_LIST),
        call("torch.jit._pickle.build_tensor_from_id", num(0)),
        call("torch.jit._pickle.restore_type_tag", EMPTY_LIST, text("List[int]")),
        call("torch.jit._pickle.restore_type_tag", EMPTY_DICT, text("Dict[str, Tensor]")),
        call("torch.jit._pickle.build_intlist", EMPTY_LIST) + num(3) + b"a",  # the result is the list
    ],
)
def test_the_builders_vetted_forms_need_only_an_allowlist(body: bytes) -> None:
    judgement = judged(body)
    assert (judgement.verdict, judgement.problems) == ("needs-allowlist", [])


@pytest.mark.parametrize(
    ("body", "verdict", "blamed"),
    [
        # What a builder is handed is never called by it; what the pickle calls to make it is judged.
        (call("torch.jit._pickle.build_intlist", b"(" + call("os.system", text("true")) + b"l"), "dangerous",
         "os.system"),
        (call("torch.jit._pickle.build_tensorlist", b"(" + call(UNKNOWN) + b"l"), "unknown-call", UNKNOWN),
        (call("torch.jit._pickle.restore_type_tag", EMPTY_LIST, call("builtins.eval", text("1"))), "dangerous",
         "builtins.eval"),
        # Forms the builders were not vetted for: an object the pickle built, a global, extra arguments.
        (call("torch.jit._pickle.build_intlist", new("mylib.Iterable")), "unknown-call",
         "torch.jit._pickle.build_intlist"),
        (call("torch.jit._pickle.build_boollist", glob("os.system")), "dangerous", "os.system"),
        (call("torch.jit._pickle.build_doublelist", EMPTY_LIST, EMPTY_LIST), "unknown-call",
         "torch.jit._pickle.build_doublelist"),
        # isinstance(data, int) would read the __class__ of an object the pickle built.
        (call("torch.jit._pickle.build_tensor_from_id", new("mylib.Number")), "unknown-call",
         "torch.jit._pickle.build_tensor_from_id"),
        (call("torch.jit._pickle.build_tensor_from_id", text("0")), "unknown-call",
         "torch.jit._pickle.build_tensor_from_id"),
        (call("torch.jit._pickle.restore_type_tag", new("mylib.Box"), text("List[int]")), "unknown-call",
         "torch.jit._pickle.restore_type_tag"),
        (call("torch.jit._pickle.restore_type_tag", EMPTY_LIST, glob(UNKNOWN)), "unknown-call",
         "torch.jit._pickle.restore_type_tag"),
        # SETITEM(S) on a list builder's result would call a method a list does not have.
        (call("torch.jit._pickle.build_intlist", EMPTY_LIST) + text("k") + num(1) + b"s", "dangerous", None),
        (call("torch.jit._pickle.build_tensor_from_id", num(0)) + num(1) + b"a", "dangerous", None),
    ],
)  # fmt: skip
def test_no_gadget_through_a_builder(body: bytes, verdict: str, blamed: str | None) -> None:
    judgement = judged(body)
    assert judgement.verdict == verdict, (judgement.globals, judgement.problems)
    if blamed is not None:
        assert verdict_of(judgement, blamed) == verdict


TOP = "__torch__.app.Net"
INNER = "__torch__.torch.nn.modules.linear.Linear"
# data.pkl of a TorchScript module: Net() holding a Linear(), each given its state.
SCRIPTED = new(TOP) + b"}(" + text("fc") + new(INNER) + b"}" + text("training") + b"\x88sb" + b"ub"
ARCHIVE = TorchScript(TOP, {"__torch__.app": "m/code/__torch__/app.py"})


def judged_script(body: bytes, allow: dict[str, str] | None = None, ts: TorchScript | None = ARCHIVE) -> Judgement:
    return judge([decode(b"\x80\x02" + body + b".")], allow, ts)


def test_torchscript_classes_are_unknown_calls_pointing_at_the_top() -> None:
    judgement = judged_script(SCRIPTED)
    assert judgement.verdict == "unknown-call"
    top, inner = (next(g for g in judgement.globals if g.qualname == q) for q in (TOP, INNER))
    assert top.calls == [f"the TorchScript code of {TOP} (m/code/__torch__/app.py)"]
    assert inner.calls == [f"the TorchScript code of {INNER}"]
    assert all(f"--allow {TOP}" in g.reason and g.verdict == "unknown-call" for g in (top, inner))
    assert unknown_calls_by_allow(judgement.globals) == {TOP: top.calls + inner.calls}


def test_allowing_the_top_trusts_every_class_of_the_archive() -> None:
    judgement = judged_script(SCRIPTED, {TOP: "--allow"})
    assert judgement.verdict == "needs-allowlist"
    assert {g.qualname: g.allowed_by for g in judgement.globals} == {TOP: "--allow", INNER: None}
    assert unknown_calls_by_allow(judgement.globals) == {}


def test_an_inner_class_allowed_alone_leaves_the_archive_untrusted() -> None:
    judgement = judged_script(SCRIPTED, {INNER: "pyproject.toml"})
    assert (judgement.verdict, verdict_of(judgement, INNER), verdict_of(judgement, TOP)) == (
        "unknown-call", "needs-allowlist", "unknown-call"
    )  # fmt: skip


def test_without_a_top_level_class_each_class_is_allowed_by_its_own_name() -> None:
    judgement = judged_script(SCRIPTED, ts=TorchScript(None))
    assert set(unknown_calls_by_allow(judgement.globals)) == {TOP, INNER}
    assert judged_script(SCRIPTED, {TOP: "--allow", INNER: "--allow"}, TorchScript(None)).verdict == "needs-allowlist"


def test_classes_a_type_string_names_are_torchscript_classes() -> None:
    """torch.jit.load compiles the `__torch__` classes of a restore_type_tag type string."""
    tagged = call("torch.jit._pickle.restore_type_tag", EMPTY_DICT, text(f"Dict[str, {INNER}]")) + b"0"
    judgement = judged_script(tagged + SCRIPTED)
    assert verdict_of(judgement, "torch.jit._pickle.restore_type_tag") == "needs-allowlist"
    (inner,) = [g for g in judgement.globals if g.qualname == INNER]
    assert (inner.verdict, inner.uses) == ("unknown-call", ["instantiate", "reference"])
    only_named = call("torch.jit._pickle.restore_type_tag", EMPTY_LIST, text("List[__torch__.evil.Code]"))
    assert verdict_of(judged_script(only_named), "__torch__.evil.Code") == "unknown-call"
    assert judged_script(tagged + SCRIPTED, {TOP: "--allow"}).verdict == "needs-allowlist"


@pytest.mark.parametrize(
    "gadget",
    [call("os.system", text("true")) + b"0", call("__torch__.app.__reduce__") + b"0", glob("builtins.exec") + b"0"],
)
def test_a_trusted_archive_with_a_gadget_stays_dangerous(gadget: bytes) -> None:
    assert judged_script(gadget + SCRIPTED, {TOP: "--allow"}).verdict == "dangerous"


def test_torch_classes_outside_an_archive_are_still_code() -> None:
    """pickle.load cannot import `__torch__` (no such module); only torch.jit.load gives
    those names meaning, by compiling code/. Without an archive (a TorchScript file inside
    a plain zip) nothing trusts them but their own names."""
    with pytest.raises(ModuleNotFoundError, match="__torch__"):
        pickle.loads(b"\x80\x02" + SCRIPTED + b".")  # noqa: S301 - our own bytes, to show the import fails
    judgement = judged_script(SCRIPTED, {TOP: "--allow"}, ts=None)
    assert (judgement.verdict, verdict_of(judgement, INNER)) == ("unknown-call", "unknown-call")
    assert set(unknown_calls_by_allow(judged_script(SCRIPTED, ts=None).globals)) == {TOP, INNER}


# -- one global record called many times (a state_dict holds a call per tensor) -----------------


def _calls_of_one_record(qualname: str, *calls: bytes) -> bytes:
    """A list of calls of one global record, shared through the memo as pickle writes it."""
    return glob(qualname) + b"q\x00(" + b"".join(b"h\x00(" + args + b"tR" for args in calls) + b"l"


def test_many_calls_of_one_global_show_the_first_three_and_count_the_rest() -> None:
    body = _calls_of_one_record("mypkg.make", *(b"K" + bytes([i]) for i in range(1, 6)))
    (found,) = judged(body).globals
    assert found.verdict == "unknown-call"
    assert found.calls == ["mypkg.make(1)", "mypkg.make(2)", "mypkg.make(3)", "... and 2 more"]


def test_a_later_call_of_a_counted_global_is_still_judged_for_its_setitems() -> None:
    # The first calls only need counting; the last one's result is given SETITEMS, which calls
    # __setitem__ of what torch's rebuild function returns.
    body = _calls_of_one_record("torch._utils._rebuild_tensor_v2", b"K\x01", b"K\x02")
    body = body[:-1] + b"h\x00(K\x03tR(" + text("k") + b"K\x04ul"
    judgement = judged(body)
    assert judgement.verdict == "dangerous"
    assert any("GHSA-63cw-57p8-fm3p" in p for p in judgement.problems)
