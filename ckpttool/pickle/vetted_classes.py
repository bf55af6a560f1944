"""Classes of the standard library, torch and numpy a pickle may instantiate and give
state without running anything but their construction and state.

Instantiating a class is a call of its code: `__new__`, BUILD's `__setstate__` (or the
`__dict__` update and, for slot state, `setattr` through its `__setattr__`), and `__del__`
when the object is dropped. Each entry was read for those and says why they only store
the state. A class of the user's own package is judged by its name alone; one of the
standard library, torch or numpy (`reach.is_internal`) is `needs-allowlist` only from here.
Slot state is not vetted for any of them (an implicit call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpttool.pickle.ecosystem import ATTRIBUTE_DICTS
from ckpttool.pickle.objects import UNSET, Call
from ckpttool.pickle.vetted import (
    BIT_GENERATOR_CTOR,
    NUMPY_BIT_GENERATORS,
    SEED_SEQUENCE,
    SEED_SEQUENCE_UNPICKLER,
    plain_or_arrays,
)
from ckpttool.pickle.vetted_dtensor import DTENSOR, DTENSOR_CLASSES, DTENSOR_FORMS, rebuilt_dtensor_misfit
from ckpttool.pickle.vetted_optim import OPTIMIZERS, optimizer_form

_DCP = "torch.distributed.checkpoint"
_DCP_DATACLASS = "a dataclass of DCP's .metadata: BUILD stores its fields; no __setstate__ that calls, no __del__"

VETTED_CLASSES: dict[str, str] = {
    "argparse.Namespace": "an attribute bag: BUILD updates its __dict__; no __setstate__, no __del__",
    "numpy.ndarray": "the array _reconstruct allocates; its __setstate__ (C code) copies bytes or a list of items",
    **dict.fromkeys(
        (f"{_DCP}.metadata.{name}" for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                                "ChunkStorageMetadata", "MetadataIndex", "StorageMeta")),
        _DCP_DATACLASS,
    ),
    f"{_DCP}.metadata.TensorProperties": "DCP's tensor properties: __setstate__ assigns its fields from a tuple",
    f"{_DCP}.filesystem._StorageInfo": "DCP's storage record: __setstate__ updates its fields from a dict",
    # The save plans Megatron-Core keeps in .metadata (`all_local_plans`): frozen dataclasses.
    **dict.fromkeys(
        (f"{_DCP}.planner.{name}" for name in ("SavePlan", "WriteItem", "TensorWriteData")),
        "a frozen dataclass of DCP's save plan: BUILD stores its fields in __dict__; no __setstate__, no __del__",
    ),
    f"{_DCP}.filesystem._StoragePrefix": "DCP's file-name prefix of a save plan: a dataclass of one string",
    **dict.fromkeys(
        ("torch.nn.utils.weight_norm.WeightNorm", "torch.nn.utils.spectral_norm.SpectralNorm",
         "torch.nn.utils.spectral_norm.SpectralNormStateDictHook",
         "torch.nn.utils.spectral_norm.SpectralNormLoadStateDictPreHook"),
        "the hook weight_norm/spectral_norm keep in a module's hook dicts: BUILD stores a name and numbers; "
        "no __setstate__, no __del__; it runs only on forward or state_dict",
    ),
    "torch.nn.modules.module._WrappedHook": (
        "a module's state_dict hook wrapper: __setstate__ stores the hook and a weak reference to its module"
    ),
    "uuid.UUID": (
        "a run id: __setstate__ stores the int and looks its SafeUUID code up (an Enum value lookup); "
        "nothing of the uuid module's process-running node lookup is reached; no __del__"
    ),
    "torch.torch_version.TorchVersion": (
        "torch.__version__ as a checkpoint stores it: a str subclass built by str.__new__ from a string; "
        "its comparison methods run only when called; no __setstate__, no __del__"
    ),
    **dict.fromkeys(
        NUMPY_BIT_GENERATORS.values(),
        "a numpy bit generator: __new__ seeds it from the system's entropy; __setstate__ (C code) reads the "
        "state's ints and arrays (their form is checked) and stores a SeedSequence; no __del__ that calls",
    ),
    "numpy.random._generator.Generator": (
        "a numpy Generator around a bit generator; __setstate__ (numpy 1) hands the state to the bit generator"
    ),
    "numpy.random.mtrand.RandomState": (
        "numpy's legacy RandomState around an MT19937; __setstate__ is set_state, reading ints, floats and the "
        "key array"
    ),
    SEED_SEQUENCE: "numpy's seed record: its Cython __setstate__ stores entropy, pool array, pool size and spawn key",
    **dict.fromkeys(
        ("torch.amp.grad_scaler.GradScaler", "torch.cuda.amp.grad_scaler.GradScaler"),
        "AMP's loss scaler: __setstate__ updates its __dict__ (numbers, a device string and a defaultdict whose "
        "factory is judged as called); no __del__",
    ),
    **OPTIMIZERS,
    **DTENSOR_CLASSES,
    "_io.BytesIO": (
        "an in-memory buffer (TransformerEngine's extra state in older checkpoints): __setstate__ (C code) "
        "copies its bytes and position; it opens no file; no __del__ beyond freeing the buffer"
    ),
    **dict.fromkeys(
        ATTRIBUTE_DICTS,
        "Lightning's AttributeDict, a dict whose attributes are its items: dict.__new__ and dict's own "
        "__setitem__ for SETITEMS (its form: no BUILD, which would look __setstate__ up among the items); "
        "no __del__",
    ),
    "joblib.numpy_pickle.NumpyArrayWrapper": (
        "joblib's array placeholder: BUILD stores shape, order and dtype; joblib.load replaces it by the array "
        "it reads from the bytes after it (a pickle of its own for object arrays, judged as such)"
    ),
}  # fmt: skip

Form = Callable[[tuple[Any, ...], Any], str | None]  # (NEWOBJ arguments, BUILD state) -> what does not fit


def _uuid_form(args: tuple[Any, ...], state: Any) -> str | None:
    """UUID.__getstate__'s dict: a plain int, and the SafeUUID code when it is known (any other
    value would be hashed by the Enum lookup, calling a method of an object the pickle built)."""
    if args or type(state) is not dict or not set(state) <= {"int", "is_safe"} or type(state.get("int")) is not int:
        return "expected uuid.UUID() with the state {'int': int, 'is_safe': code}"
    safe = state.get("is_safe")
    return None if safe is None or (type(safe) is int and safe in (0, -1)) else "an is_safe that is no SafeUUID code"


def _version_form(args: tuple[Any, ...], state: Any) -> str | None:
    # str.__new__ of anything but a str would call that object's __str__.
    if len(args) == 1 and type(args[0]) is str and (state is UNSET or state is None or state == {}):
        return None
    return "expected TorchVersion(str) without state"


def _namespace_form(args: tuple[Any, ...], state: Any) -> str | None:
    # BUILD interns each key and stores it in __dict__: only a dict with string keys does nothing else.
    if not args and (state is UNSET or (type(state) is dict and all(type(k) is str for k in state))):
        return None
    return "expected SimpleNamespace() with a dict of attribute names as its state"


def _dict_state_form(args: tuple[Any, ...], state: Any) -> str | None:
    # __dict__.update of anything but a dict would call that object's keys().
    if not args and (state is UNSET or (type(state) is dict and all(type(k) is str for k in state))):
        return None
    return "expected no arguments and a dict of attribute names as its state"


def _python_random_form(args: tuple[Any, ...], state: Any) -> str | None:
    """Random.getstate(): (3, the generator's 625 words, the cached gauss value)."""
    if type(state) is tuple and len(state) == 3 and state[0] == 3 and type(state[1]) is tuple:
        if all(type(w) is int for w in state[1]) and (state[2] is None or type(state[2]) is float):
            return None
    return "expected random.Random() with the state (3, words, gauss)"


def _is_seed_sequence(value: Any) -> bool:
    return value is None or (isinstance(value, Call) and value.func_name == SEED_SEQUENCE_UNPICKLER)


def _bit_generator_form(args: tuple[Any, ...], state: Any) -> str | None:
    """BitGenerator.__setstate__ takes its state dict, or (state dict, SeedSequence) since numpy 2."""
    if type(state) is tuple and len(state) == 2 and _is_seed_sequence(state[1]):
        state = state[0]
    if state is UNSET or (type(state) is dict and plain_or_arrays(state)):
        return None
    return "expected a bit generator's state: a dict of numbers and arrays, and a SeedSequence"


def _rng_form(args: tuple[Any, ...], state: Any) -> str | None:
    if state is UNSET or state is None or (type(state) in (dict, tuple) and plain_or_arrays(state)):
        return None
    return "expected a random state of numbers and arrays"


def _seed_sequence_form(args: tuple[Any, ...], state: Any) -> str | None:
    if type(state) is tuple and len(state) == 5 and plain_or_arrays(state):
        return None
    return "expected a SeedSequence's state: entropy, spawn count, pool array, pool size, spawn key"


_BYTES_RESULTS = frozenset({"_codecs.encode", "builtins.bytes", "builtins.bytearray"})


def _is_bytes(value: Any) -> bool:
    return type(value) in (bytes, bytearray) or (isinstance(value, Call) and value.func_name in _BYTES_RESULTS)


def _bytesio_form(args: tuple[Any, ...], state: Any) -> str | None:
    """BytesIO.__getstate__: (its bytes, the position, its __dict__ or None); any other value
    would be read through the buffer protocol or iterated, calling an object the pickle built."""
    if len(args) > 1 or (args and not _is_bytes(args[0])):
        return "expected BytesIO() or BytesIO(bytes)"
    if state is UNSET or (
        type(state) is tuple
        and len(state) == 3
        and _is_bytes(state[0])
        and type(state[1]) is int
        and (state[2] is None or (type(state[2]) is dict and all(type(k) is str for k in state[2])))
    ):
        return None
    return "expected a BytesIO state: (bytes, position, None or a dict of attribute names)"


def _attribute_dict_form(args: tuple[Any, ...], state: Any) -> str | None:
    if not args and state is UNSET:
        return None
    return "expected AttributeDict() filled by SETITEMS, without BUILD (it would call an item named __setstate__)"


# The argument and state forms under which a vetted class's construction only stores data.
CLASS_FORMS: dict[str, Form] = {
    "uuid.UUID": _uuid_form,
    "_io.BytesIO": _bytesio_form,
    "torch.torch_version.TorchVersion": _version_form,
    "types.SimpleNamespace": _namespace_form,
    "torch.amp.grad_scaler.GradScaler": _dict_state_form,
    "torch.cuda.amp.grad_scaler.GradScaler": _dict_state_form,
    "random.Random": _python_random_form,
    **dict.fromkeys(ATTRIBUTE_DICTS, _attribute_dict_form),
    **dict.fromkeys(OPTIMIZERS, optimizer_form),
    **dict.fromkeys([BIT_GENERATOR_CTOR, *NUMPY_BIT_GENERATORS.values()], _bit_generator_form),
    "numpy.random._pickle.__generator_ctor": _rng_form,
    "numpy.random._pickle.__randomstate_ctor": _rng_form,
    SEED_SEQUENCE_UNPICKLER: _seed_sequence_form,
    **DTENSOR_FORMS,
}
# What builds an object whose __setstate__ takes a pair (BUILD's tuple is no slot state there).
PAIR_STATE = frozenset({BIT_GENERATOR_CTOR, *NUMPY_BIT_GENERATORS.values()})


def class_misfit(qualname: str, args: tuple[Any, ...], state: Any) -> str | None:
    form = CLASS_FORMS.get(qualname)
    return form(args, state) if form else None


# Tensor subclasses vetted as `_rebuild_from_type_v2(func, cls, args, state)` rebuilds them:
# (that call's arguments, BUILD state on its result) -> what does not fit.
SUBCLASS_FORMS: dict[str, Form] = {DTENSOR: rebuilt_dtensor_misfit}


# State keys of a vetted class that hold a class it instantiates (not calls with data):
# joblib makes `_reconstruct(subclass, (0,), 'b')` of an array subclass.
INSTANTIATED_STATE: dict[str, frozenset[str]] = {"joblib.numpy_pickle.NumpyArrayWrapper": frozenset({"subclass"})}

# nn.Module subclasses: Module.__setstate__ updates __dict__ and fills the hook dicts an old
# pickle lacks; the overrides in torch/nn/modules (conv, pooling, activation, rnn,
# transformer, upsampling) then read plain attributes of that state. No Module has __del__.
_NN_MODULES = "torch.nn.modules."
_NN_MODULE_WHY = "an nn.Module: __setstate__ stores the state and reads plain attributes of it; no __del__"


def vetted_class(qualname: str) -> str | None:
    """Why instantiating `qualname` and giving it state runs nothing else, or None."""
    if qualname in VETTED_CLASSES:
        return VETTED_CLASSES[qualname]
    if qualname.startswith(_NN_MODULES):
        name = qualname.rsplit(".", 1)[1]
        if qualname.count(".") == 4 and name[:1].isupper():
            return _NN_MODULE_WHY
    return None
