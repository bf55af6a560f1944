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
"""

from __future__ import annotations

# qualname -> (why calling it runs no code, the values it may be called with)
INT_ENUMS: dict[str, tuple[str, frozenset[int]]] = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": (
        "the ZeRO stage DeepSpeed saves, an int enum: a member looked up by its value (0-3)",
        frozenset({0, 1, 2, 3}),
    ),
}
