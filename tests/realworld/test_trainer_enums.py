"""The str enums Hugging Face's Trainer pickles in training_args.bin: a member looked up by
its value, vetted for one string and nothing else (`ecosystem.STR_ENUMS`)."""

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
