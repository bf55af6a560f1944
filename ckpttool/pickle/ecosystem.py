"""Classes of training libraries that their checkpoints' pickles name, read in each
library's source for what building them from a pickle does. Plain data only: the judge
(`vetted`) turns these into verdicts.

DeepSpeed's ZeRO checkpoints name four classes. `ZeroStageEnum` is an int enum (`class
ZeroStageEnum(int, Enum)`, deepspeed/runtime/zero/config.py): the pickle calls it with the
stage's value, which looks a member up and runs nothing else. The other three are state
holders, instantiated and given their attributes, which the judge already tells from
calls (needs-allowlist, as any class that is only given state): `LossScaler` and `DynamicLossScaler`
(deepspeed/runtime/fp16/loss_scaler.py, no `__setstate__`) and the dataclass
`fragment_address` (deepspeed/utils/tensor_fragment.py).

Hugging Face's `Trainer` saves its `TrainingArguments` in every checkpoint-N/training_args.bin,
and the arguments hold str enums, each pickled as a call of its class with the member's value.
Calling an Enum class with a string looks the member up (a dict lookup by the string, then
string comparisons) and, when none matches, calls the class's `_missing_`: transformers'
`ExplicitEnum._missing_` (transformers/utils/generic.py) raises a ValueError that formats the
string and the known values; accelerate's `DistributedType` (accelerate/utils/dataclasses.py)
keeps Enum's own, which returns None. So do the str enums whole models hold: peft's
`PeftType` and `TaskType` in a PeftModel's config (peft/utils/peft_types.py) and timm's
`Format` in a ViT's PatchEmbed (timm/layers/format.py). None of these classes defines
`__new__` or a metaclass `__call__`, so any string only finds a member or fails the load.
"""

from __future__ import annotations

# qualname -> (why calling it runs no code, the values it may be called with)
INT_ENUMS: dict[str, tuple[str, frozenset[int]]] = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": (
        "the ZeRO stage DeepSpeed saves, an int enum: a member looked up by its value (0-3)",
        frozenset({0, 1, 2, 3}),
    ),
}

_STR_ENUM_WHY = "a str enum of the training arguments Trainer saves: a member looked up by its value (any string)"
_TRAINER_UTILS = "transformers.trainer_utils."
# qualname -> why calling it with one string runs no code.
STR_ENUMS: dict[str, str] = {
    **dict.fromkeys(
        (_TRAINER_UTILS + name for name in ("IntervalStrategy", "SaveStrategy", "HubStrategy", "SchedulerType",
                                            "FSDPOption")),
        _STR_ENUM_WHY,
    ),
    "transformers.training_args.OptimizerNames": _STR_ENUM_WHY,
    "transformers.debug_utils.DebugOption": _STR_ENUM_WHY,
    **dict.fromkeys(
        ("peft.utils.peft_types.PeftType", "peft.utils.peft_types.TaskType"),
        "a str enum of a peft adapter's config (the kind of adapter, the task): a member looked up by its value "
        "(any string)",
    ),
    "timm.layers.format.Format": (
        "timm's tensor layout (NCHW, NHWC, ...), a str enum a ViT's patch embedding holds: a member looked up "
        "by its value (any string)"
    ),
    "accelerate.utils.dataclasses.DistributedType": (
        "accelerate's kind of distributed run, held by the PartialState in Trainer's arguments: a str enum, "
        "a member looked up by its value (any string)"
    ),
}  # fmt: skip

# Lightning's AttributeDict (lightning/fabric/utilities/data.py; pytorch_lightning's and
# lightning.pytorch's are subclasses that add only a docstring): a dict subclass whose
# `__getattr__` returns its items. Fabric's checkpoints hold it wherever the saved state did
# (`fabric.save(path, state)`). The pickle makes it with NEWOBJ (dict.__new__) and fills it
# with SETITEMS: dict's own __setitem__ (C code; none defined). BUILD would look
# `__setstate__` up through `__getattr__` among its items, so it is vetted only without
# BUILD, as the library writes it.
ATTRIBUTE_DICTS: frozenset[str] = frozenset(
    {"lightning.fabric.utilities.data.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
     "lightning.pytorch.utilities.parsing.AttributeDict", "pytorch_lightning.utilities.parsing.AttributeDict"}
)  # fmt: skip
