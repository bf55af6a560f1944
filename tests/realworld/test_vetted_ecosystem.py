"""What the vetted tables accept from the pickles libraries write: the str enums Hugging
Face's Trainer pickles in training_args.bin (a member looked up by its value, vetted for one
string and nothing else, `ecosystem.STR_ENUMS`), the layer classes models hold, and Lightning's
AttributeDict."""

from __future__ import annotations

import pytest
from support.judging import call, judged, new, num, text, verdict_of

from ckpttool.pickle.ecosystem import STR_ENUMS

INTERVAL = "transformers.trainer_utils.IntervalStrategy"


@pytest.mark.parametrize("name", sorted(STR_ENUMS))
def test_a_member_built_from_its_value_needs_only_an_allowlist(name: str) -> None:
    judgement = judged(call(name, text("steps")))
    assert (judgement.verdict, verdict_of(judgement, name)) == ("needs-allowlist", "needs-allowlist")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((num(1),), id="an int"),
        pytest.param((text("steps"), text("epoch")), id="two strings"),
        pytest.param((), id="nothing"),
        # An object the pickle built would be hashed and compared: its methods called.
        pytest.param((new("argparse.Namespace"),), id="a built object"),
    ],
)
def test_anything_but_one_string_is_an_unknown_call(args: tuple[bytes, ...]) -> None:
    judgement = judged(call(INTERVAL, *args))
    assert (judgement.verdict, verdict_of(judgement, INTERVAL)) == ("unknown-call", "unknown-call")


def test_an_enum_of_the_same_name_elsewhere_is_not_vetted() -> None:
    judgement = judged(call("mypackage.trainer_utils.IntervalStrategy", text("steps")))
    assert judgement.verdict == "unknown-call"


def test_a_norm_layer_class_called_by_the_pickle_is_an_unknown_call() -> None:
    """Vetted as a class a model holds or the pickle instantiates, never as a call."""
    norm = "torch.nn.modules.batchnorm.BatchNorm2d"
    judgement = judged(call(norm, num(4)))
    assert (judgement.verdict, verdict_of(judgement, norm)) == ("unknown-call", "unknown-call")
    assert judged(new(norm) + b"}b").verdict == "needs-allowlist"


ATTRIBUTE_DICT = "lightning.fabric.utilities.data.AttributeDict"


def test_an_attribute_dict_filled_by_setitems_needs_only_an_allowlist() -> None:
    judgement = judged(new(ATTRIBUTE_DICT) + text("lr") + num(1) + b"s")
    assert (judgement.verdict, verdict_of(judgement, ATTRIBUTE_DICT)) == ("needs-allowlist", "needs-allowlist")


@pytest.mark.parametrize(
    "body",
    [
        # BUILD looks __setstate__ up through __getattr__, among the items: it would call this one.
        pytest.param(new(ATTRIBUTE_DICT) + text("__setstate__") + b"cmypackage\nrun\ns" + b"}b", id="BUILD"),
        pytest.param(new(ATTRIBUTE_DICT, text("x")), id="arguments"),
        pytest.param(call(ATTRIBUTE_DICT) + text("lr") + num(1) + b"s", id="called"),
        pytest.param(new("mypackage.data.AttributeDict") + text("lr") + num(1) + b"s", id="another package"),
    ],
)
def test_an_attribute_dict_otherwise_is_an_unknown_call(body: bytes) -> None:
    assert judged(body).verdict == "unknown-call"
