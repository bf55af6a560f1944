"""What the unpickler calls unasked, and the names never to allowlist: unit verdicts on
pickles built opcode by opcode and only ever decoded by ckpttool."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from support import judging
from support.judging import call, glob, new, num, text, verdict_of

from ckpttool.pickle import stdlib_reach
from ckpttool.pickle.judge import Judgement

GENERATOR = Path(__file__).resolve().parents[2] / "tools" / "generate_stdlib_reach.py"
BUILD, APPEND, APPENDS, SETITEM, MARK, POP, TUPLE2 = b"b", b"a", b"e", b"s", b"(", b"0", b"\x86"


def judged(body: bytes, allow: dict[str, str] | None = None) -> Judgement:
    return judging.judged(body, allow, protocol=4)


EMPTY_LIST, EMPTY_DICT = b"]", b"}"


def state(**encoded: bytes) -> bytes:
    return EMPTY_DICT + MARK + b"".join(text(k) + v for k, v in encoded.items()) + b"u"


def reason_of(judgement: Judgement, qualname: str) -> str:
    (found,) = [g for g in judgement.globals if g.qualname == qualname]
    return found.reason


# -- implicit calls ---------------------------------------------------------------------------


def test_a_callable_in_an_objects_state_is_judged_as_called() -> None:
    judgement = judged(new("mypkg.Box") + state(hook=glob("mypkg.tools.run")) + BUILD)
    assert verdict_of(judgement, "mypkg.Box") == "needs-allowlist"
    assert verdict_of(judgement, "mypkg.tools.run") == "unknown-call"
    assert "a callable in the state of mypkg.Box" in reason_of(judgement, "mypkg.tools.run")


def test_a_callable_in_a_constructors_arguments_is_judged_as_called() -> None:
    judgement = judged(new("mypkg.Box", glob("mypkg.tools.run")))
    assert verdict_of(judgement, "mypkg.tools.run") == "unknown-call"


@pytest.mark.parametrize(
    ("ops", "method"),
    [
        (text("x") + APPEND, "append"),
        (MARK + text("x") + APPENDS, "extend"),
        (text("k") + text("v") + SETITEM, "__setitem__"),
    ],
    ids=["APPEND", "APPENDS", "SETITEM"],
)
def test_filling_an_object_calls_its_class(ops: bytes, method: str) -> None:
    judgement = judged(new("mypkg.Box") + EMPTY_DICT + BUILD + ops)
    assert verdict_of(judgement, "mypkg.Box") == "unknown-call"
    assert method in reason_of(judgement, "mypkg.Box")


def test_slot_state_is_set_through_the_classs_setattr() -> None:
    judgement = judged(new("mypkg.Box") + b"N" + state(x=num(1)) + TUPLE2 + BUILD)
    assert verdict_of(judgement, "mypkg.Box") == "unknown-call"
    assert "__setattr__" in reason_of(judgement, "mypkg.Box")


def test_what_an_allowlisted_constructor_iterates_is_called() -> None:
    judgement = judged(call("collections.OrderedDict", new("mypkg.Box") + EMPTY_DICT + BUILD))
    assert verdict_of(judgement, "collections.OrderedDict") == "safe"
    assert verdict_of(judgement, "mypkg.Box") == "unknown-call"
    assert "iterated by collections.OrderedDict" in reason_of(judgement, "mypkg.Box")


def test_a_containers_items_are_data_until_an_object_holds_them() -> None:
    ordered = call("collections.OrderedDict") + text("cls") + glob("mypkg.models.Net") + SETITEM
    assert verdict_of(judged(ordered), "mypkg.models.Net") == "needs-allowlist"
    held = new("mypkg.Box") + state(config=ordered) + BUILD
    assert verdict_of(judged(held), "mypkg.models.Net") == "unknown-call"


def test_real_containers_are_filled_without_a_call() -> None:
    ordered = call("collections.OrderedDict") + text("k") + EMPTY_LIST + SETITEM
    deque = call("collections.deque", EMPTY_LIST) + text("x") + APPEND
    assert judged(ordered).verdict == "safe"
    assert judged(deque).verdict == "needs-allowlist"


# -- classes of the standard library, torch and numpy -----------------------------------------


@pytest.mark.parametrize("cls", ["random.Random", "torch.optim.sgd.SGD", "numpy.polynomial.polynomial.Polynomial"])
def test_an_internal_class_outside_the_vetted_list_is_an_unknown_call(cls: str) -> None:
    judgement = judged(new(cls) + EMPTY_DICT + BUILD)
    assert verdict_of(judgement, cls) in ("unknown-call", "dangerous")


@pytest.mark.parametrize(
    "cls",
    ["argparse.Namespace", "torch.nn.modules.linear.Linear", "torch.distributed.checkpoint.metadata.Metadata",
     "mypkg.models.Net", "__main__.Net"],
)  # fmt: skip
def test_vetted_and_user_classes_given_plain_state_need_an_allowlist(cls: str) -> None:
    judgement = judged(new(cls) + state(training=b"\x88", size=num(3)) + BUILD)
    assert judgement.verdict == "needs-allowlist"


@pytest.mark.parametrize("marker", ["typing.Any", "numpy.float32", "torch.nn.functional.relu", "builtins.dict"])
def test_type_markers_held_in_state_need_an_allowlist(marker: str) -> None:
    """omegaconf keeps typing.Any in a node's metadata; configs keep dtypes and activations."""
    judgement = judged(new("omegaconf.base.ContainerMetadata") + state(ref_type=glob(marker)) + BUILD)
    assert judgement.verdict == "needs-allowlist", judgement.globals


# -- names never to allowlist ------------------------------------------------------------------

GADGET_LABELS = [
    "uuid._get_command_stdout", "idlelib.pyshell.ModifiedInterpreter.runcode", "lib2to3.pgen2.grammar.Grammar.loads",
    "torch.utils.bottleneck.__main__.run_cprofile", "torch.utils._config_module.ConfigModule.load_config",
    "logging.FileHandler", "typing.types.CodeType", "typing.types.FunctionType", "platform.os.system",
    "_aix_support.subprocess.call", "mypkg._helper", "mypkg.Model.load", "mypkg.os.system", "wave.open",
    "configparser.RawConfigParser", "mailbox.Maildir", "pydoc.pipepager", "shutil.rmtree", "pathlib.Path.write_text",
]  # fmt: skip


def dotted(qualname: str) -> bytes:
    """GLOBAL with the module first and the rest as a dotted name (protocol 4 resolves it)."""
    head, *rest = qualname.split(".")
    modules = {"idlelib.pyshell", "lib2to3.pgen2.grammar", "torch.utils.bottleneck.__main__",
               "torch.utils._config_module"}  # fmt: skip
    module = next((m for m in modules if qualname.startswith(m + ".")), head)
    return f"c{module}\n{qualname[len(module) + 1 :]}\n".encode()


# A private class of the user's own package that is only instantiated is a class (below).
USES = [
    (q, u)
    for q in GADGET_LABELS
    for u in ("called", "referenced", "instantiated")
    if q != "mypkg._helper" or u != "instantiated"
]


@pytest.mark.parametrize(("qualname", "use"), USES)
def test_a_gadget_label_is_dangerous_and_never_allowed(qualname: str, use: str) -> None:
    ref = dotted(qualname)
    body = {
        "called": ref + MARK + text("x") + b"tR",
        "referenced": ref,
        "instantiated": ref + b")\x81" + EMPTY_DICT + BUILD,
    }[use]
    judgement = judged(body + POP + b"N", {qualname: "--allow"})
    assert (judgement.verdict, verdict_of(judgement, qualname)) == ("dangerous", "dangerous"), judgement.globals
    assert "--allow" not in reason_of(judgement, qualname).replace("allowed by --allow", "")


@pytest.mark.parametrize(
    ("qualname", "reached"),
    [("typing.types.CodeType", "code objects"), ("platform.os.system", "module os"),
     ("_aix_support.subprocess.call", "subprocess"), ("mypkg.builtins.eval", "runs code")],
)  # fmt: skip
def test_a_name_through_a_module_attribute_is_judged_as_what_it_reaches(qualname: str, reached: str) -> None:
    judgement = judged(dotted(qualname) + POP + b"N")
    assert verdict_of(judgement, qualname) == "dangerous"
    assert reached in reason_of(judgement, qualname)


@pytest.mark.parametrize("name", ["Outer.Inner", "_Private"])
def test_a_nested_or_private_class_of_the_users_package_is_a_class(name: str) -> None:
    assert judged(f"cmypkg\n{name}\n".encode() + b")\x81" + EMPTY_DICT + BUILD).verdict == "needs-allowlist"


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_stdlib_reach", GENERATOR)
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def generated_here(generator: Any) -> dict[str, list[str]]:
    return {name: reach for name, path in generator.stdlib_sources().items() if (reach := generator.source_reach(path))}


KEY_REACHING = ("subprocess", "pathlib", "typing", "uuid", "platform", "logging")


@pytest.mark.slow
def test_the_reach_table_is_what_the_generator_reads_from_the_standard_library() -> None:
    """Exactly, on the Python that generated it; on another patch or minor version (whose
    standard library may differ) the table must still be an unedited output of the
    generator, and the generator must still find the key modules reaching here."""
    generator = load_generator()
    committed = Path(stdlib_reach.__file__).read_text()
    modules = generated_here(generator)
    if generator.generating_version() == stdlib_reach.GENERATED_WITH:
        assert committed == generator.render(modules, generator.extension_members())
    recorded = {name: reach.split(", ") for name, reach in stdlib_reach.REACHING_MODULES.items()}
    assert committed == generator.render(recorded, stdlib_reach.REACHING_MEMBERS, stdlib_reach.GENERATED_WITH)
    for module in KEY_REACHING:
        assert module in stdlib_reach.REACHING_MODULES and module in modules
    assert "builtins.eval" in stdlib_reach.REACHING_MEMBERS


def test_off_the_recording_version_a_hand_edit_of_the_table_still_fails() -> None:
    """The form check the test above makes on any Python tells an edited table from a generated one."""
    generator = load_generator()
    recorded = {name: reach.split(", ") for name, reach in stdlib_reach.REACHING_MODULES.items()}
    edited = {**recorded, "subprocess": ["files"]}
    committed = Path(stdlib_reach.__file__).read_text()
    assert generator.render(edited, stdlib_reach.REACHING_MEMBERS, stdlib_reach.GENERATED_WITH) != committed
