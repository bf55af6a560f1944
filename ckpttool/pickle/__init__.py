"""The non-executing pickle machine: opcodes in, inert object graph out."""

from ckpttool.pickle.machine import DEFAULT_LIMITS, NO_HOOKS, Decoded, Hooks, Limits, decode
from ckpttool.pickle.objects import UNSET, Call, Global, PersistentRef

__all__ = [
    "DEFAULT_LIMITS",
    "NO_HOOKS",
    "UNSET",
    "Call",
    "Decoded",
    "Global",
    "Hooks",
    "Limits",
    "PersistentRef",
    "decode",
]
