"""The non-executing pickle machine: opcodes in, inert object graph out."""

from ckpttool.pickle.machine import DEFAULT_LIMITS, Decoded, Limits, decode
from ckpttool.pickle.objects import UNSET, Call, Global, PersistentRef

__all__ = ["DEFAULT_LIMITS", "UNSET", "Call", "Decoded", "Global", "Limits", "PersistentRef", "decode"]
