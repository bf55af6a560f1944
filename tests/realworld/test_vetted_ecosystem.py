"""What the vetted tables accept from the pickles libraries write: the str enums Hugging
Face's Trainer pickles in training_args.bin (a member looked up by its value, vetted for one
string and nothing else, `ecosystem.STR_ENUMS`), and the layer classes models hold."""

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
