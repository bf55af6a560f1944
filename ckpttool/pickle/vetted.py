"""Callables outside torch's allowlist that a pickle may call without running code.

Each entry was read for what calling it does with whatever a pickle can hand it (plain
data, globals, objects built earlier in the pickle), and says why that runs no code and
touches nothing outside the process. `fits` holds the call to the argument shapes under
which that is true: plain data where data is expected, so no method of an object the
pickle built (`__iter__`, `__int__`, ...) is called by the callee. A call that does not
fit is an unknown call. `passes` names the arguments the callee itself calls or
instantiates — defaultdict's default_factory on a missing key, copyreg._reconstructor's
base, `_reconstruct`'s array subtype — and the verdict judges those as calls or
instances of their own, so no gadget can be reached through a vetted callable.

Not vetted on purpose: anything that calls a callable it is given at load time
(`map`, `functools.partial`, ...), and `bytes(n)`/`bytearray(n)` with a count (an
allocation the file chooses).
TorchScript's `torch.jit._pickle` builders are the only members of `torch.jit` listed;
the archive's TorchScript code itself is never vetted (`judge`'s TorchScript rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckpttool.pickle.ecosystem import ATTRIBUTE_DICTS, INT_ENUMS, STR_ENUMS
from ckpttool.pickle.objects import Call, Global
from ckpttool.pickle.state import USE_CALL, USE_INSTANTIATE, USE_REFERENCE, legacy_module_class

Args = tuple[Any, ...]
Passed = list[tuple[Any, str]]  # (argument, how the callee uses it)

# Values a callee can only copy, compare or parse: nothing of theirs is called.
_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None), tuple, list, dict, set, frozenset)


def _nothing(args: Args) -> Passed:
    return []


@dataclass(frozen=True)
class Vetted:
    why: str
    fits: Callable[[Args], str | None]  # None when the arguments fit, else what does not
    passes: Callable[[Args], Passed] = _nothing
    container: str | None = None  # "dict": SETITEMS may fill the result; "list": APPENDS may
    result_class: Callable[[Args], str | None] | None = None  # the result's class, when not the callee


def describe_argument(value: Any) -> str:
    value = legacy_module_class(value)
    if isinstance(value, Global):
        return f"the global {value.qualname}"
    if isinstance(value, Call):
        return f"the result of {value.func_name or 'a computed callable'}(...)"
    return f"a {type(value).__name__}"


# Calls whose result is plain data (each judged as a call of its own): how protocols 0-2
# write bytes (`_codecs.encode(text, 'latin1')`), sets, frozensets and complex numbers.
_PLAIN_RESULTS = frozenset(
    {"_codecs.encode", "builtins.bytes", "builtins.bytearray", "builtins.set", "builtins.frozenset",
     "builtins.complex", "builtins.str", "builtins.int", "builtins.float", "builtins.tuple", "builtins.list",
     "builtins.dict", "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
     "datetime.timezone"}
)  # fmt: skip


def is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, Call) and value.func_name in _PLAIN_RESULTS


def _plain(max_args: int) -> Callable[[Args], str | None]:
    def fits(args: Args) -> str | None:
        if len(args) > max_args:
            return f"{len(args)} arguments, at most {max_args} expected"
        for value in args:
            if not is_plain(value):
                return f"{describe_argument(value)} where plain data is expected"
        return None

    return fits


def _is_global(value: Any) -> bool:
    return isinstance(legacy_module_class(value), Global)


def _bytes_fits(args: Args) -> str | None:
    # A count the pickle computes (`bytes(int('4000000000'))`) allocates as a literal one does.
    if args and (type(args[0]) is int or (isinstance(args[0], Call) and args[0].func_name == "builtins.int")):
        return "an integer count (bytes(n) allocates n bytes)"
    return _plain(3)(args)


def _defaultdict_fits(args: Args) -> str | None:
    if len(args) > 2:
        return f"{len(args)} arguments, at most 2 expected"
    if args and args[0] is not None and not _is_global(args[0]):
        return f"default_factory is {describe_argument(args[0])}, not a global"
    return _plain(1)(args[1:])


def _defaultdict_passes(args: Args) -> Passed:
    return [(args[0], USE_CALL)] if args and _is_global(args[0]) else []


def _reconstruct_fits(args: Args) -> str | None:
    if len(args) != 3 or not _is_global(args[0]):
        return "expected (array subtype, shape, type code)"
    return _plain(2)(args[1:])


def _first_instantiated(args: Args) -> Passed:
    return [(args[0], USE_INSTANTIATE)] if args and _is_global(args[0]) else []


def _dtype_fits(args: Args) -> str | None:
    if not 1 <= len(args) <= 3 or type(args[0]) is not str:
        return "expected (type string, align, copy)"
    return _plain(2)(args[1:])


def _scalar_fits(args: Args) -> str | None:
    if not 1 <= len(args) <= 2 or not _is_dtype(args[0]):
        return "expected (numpy.dtype(...), bytes)"
    return None


def _frombuffer_fits(args: Args) -> str | None:
    if len(args) != 4 or not _is_dtype(args[1]):
        return "expected (buffer, numpy.dtype(...), shape, order)"
    return _plain(4)(args[:1] + args[2:])


def _is_dtype(value: Any) -> bool:
    return isinstance(value, Call) and value.func_name == "numpy.dtype"


def _reconstructor_fits(args: Args) -> str | None:
    if len(args) != 3 or not (_is_global(args[0]) and _is_global(args[1])):
        return "expected (class, base class, state)"
    return None


def _reconstructor_passes(args: Args) -> Passed:
    """object.__new__(cls) for base object; any other base's __new__ and __init__ run."""
    passed = _first_instantiated(args)
    base = legacy_module_class(args[1]) if len(args) > 1 else None
    if isinstance(base, Global) and base.qualname != "builtins.object":
        passed.append((base, USE_CALL))
    return passed


def _newobj_fits(args: Args) -> str | None:
    return None if args and _is_global(args[0]) else "expected a class first"


def _newobj_ex_fits(args: Args) -> str | None:
    if len(args) == 3 and _is_global(args[0]) and type(args[1]) is tuple and type(args[2]) is dict:
        return None
    return "expected (class, arguments tuple, keyword dict)"


def _one_list_fits(args: Args) -> str | None:
    if len(args) == 1 and type(args[0]) is list:
        return None
    return "expected (list,)"


def _tensor_id_fits(args: Args) -> str | None:
    # Only a plain int: isinstance(data, int) on an object the pickle built would read its
    # __class__, which a class can make a property that runs code.
    if len(args) == 1 and type(args[0]) is int:
        return None
    return "expected (int,): a tensor's index in the archive's tensor table"


def _path_parts_fits(args: Args) -> str | None:
    # Only str: a path class calls os.fspath on anything else, which would call the
    # __fspath__ of an object the pickle built.
    if all(type(a) is str for a in args):
        return None
    return "expected path parts as strings"


def _enum_code_fits(codes: tuple[int, ...]) -> Callable[[Args], str | None]:
    def fits(args: Args) -> str | None:
        if len(args) == 1 and type(args[0]) is int and args[0] in codes:
            return None
        return f"expected one of the codes {', '.join(map(str, codes))}"

    return fits


_PATH = Vetted("a path object parsed from strings; nothing touches the file system", _path_parts_fits)
# What torch.distributed.checkpoint's `.metadata` calls besides torch's allowlist: its
# StorageMeta holds the folder as a pathlib path, and TensorProperties its memory format
# as an Enum member, looked up by value.
DCP_METADATA_CALLS: dict[str, Vetted] = {
    **{
        f"pathlib.{m}{c}": _PATH
        for m in ("", "_local.")
        for c in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    },
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING": Vetted(
        "the memory-format code of DCP's TensorProperties: an Enum member looked up by its value (a dict lookup)",
        _enum_code_fits((0, 1, 2)),
    ),
    # Megatron-Core keeps the save plans in `.metadata` (all_local_plans): each WriteItem's type.
    "torch.distributed.checkpoint.planner.WriteItemType": Vetted(
        "the kind of a DCP save plan's WriteItem: an Enum member looked up by its value (a dict lookup)",
        _enum_code_fits((1, 2, 3)),
    ),
}


def _int_member_fits(values: frozenset[int]) -> Callable[[Args], str | None]:
    def fits(args: Args) -> str | None:
        if len(args) == 1 and type(args[0]) is int and args[0] in values:
            return None
        return f"expected one of the values {', '.join(map(str, sorted(values)))}"

    return fits


def _one_str_fits(args: Args) -> str | None:
    # A string is hashed and compared, nothing of it called; any other value would be.
    return None if len(args) == 1 and type(args[0]) is str else "expected one string, the member's value"


# Training libraries' enums (`ecosystem`): a member looked up by its value.
ENUM_CALLS: dict[str, Vetted] = {
    **{name: Vetted(why, _int_member_fits(values)) for name, (why, values) in INT_ENUMS.items()},
    **{name: Vetted(why, _one_str_fits) for name, why in STR_ENUMS.items()},
}


_TORCHSCRIPT_NAME = re.compile(r"__torch__(?:\.\w+)+")
_MAX_TYPE_NAMES = 64


def _type_tag_passes(args: Args) -> Passed:
    """torch.jit.load resolves the `__torch__` classes a type string names by compiling
    them from code/: judged as TorchScript classes of their own."""
    text = args[1] if len(args) == 2 and type(args[1]) is str else ""
    names = dict.fromkeys(_TORCHSCRIPT_NAME.findall(text))
    return [(Global(*name.rsplit(".", 1)), USE_REFERENCE) for name in list(names)[:_MAX_TYPE_NAMES]]


def _type_tag_fits(args: Args) -> str | None:
    if len(args) == 2 and type(args[0]) in (list, dict) and type(args[1]) is str:
        return None
    return "expected (list or dict, type string)"


_TORCHSCRIPT_LIST = Vetted(
    "a TorchScript typed-list marker: returns the list it is given (torch/jit/_pickle.py); torch.jit.load's "
    "C++ unpickler only checks the element type",
    _one_list_fits,
    container="list",
)
# The names are exempt from the `torch.jit` gadget rule in `allowlist.PURE_MEMBERS`.
TORCHSCRIPT_BUILDERS: dict[str, Vetted] = {
    "torch.jit._pickle.build_intlist": _TORCHSCRIPT_LIST,
    "torch.jit._pickle.build_tensorlist": _TORCHSCRIPT_LIST,
    "torch.jit._pickle.build_doublelist": _TORCHSCRIPT_LIST,
    "torch.jit._pickle.build_boollist": _TORCHSCRIPT_LIST,
    "torch.jit._pickle.build_tensor_from_id": Vetted(
        "returns the int it is given (torch/jit/_pickle.py); torch.jit.load's C++ unpickler looks that "
        "index up, bounds-checked, in the tensors it read from the archive",
        _tensor_id_fits,
    ),
    "torch.jit._pickle.restore_type_tag": Vetted(
        "returns the list or dict it is given (torch/jit/_pickle.py); torch.jit.load parses the type "
        "string, whose __torch__ classes come from the archive's code/ (judged by the TorchScript rule)",
        _type_tag_fits,
        _type_tag_passes,
    ),
}


# numpy.dtype(typestr) returns an instance of a numpy.dtypes class (numpy >= 1.25), and
# torch's BUILD wants that class allowlisted. Type strings as dtype.__reduce__ writes them
# on Linux and macOS (a test compares them with the installed numpy).
NUMPY_DTYPE_CLASSES: dict[str, str] = {
    "b1": "BoolDType", "i1": "Int8DType", "u1": "UInt8DType", "i2": "Int16DType", "u2": "UInt16DType",
    "i4": "Int32DType", "u4": "UInt32DType", "i8": "Int64DType", "u8": "UInt64DType", "f2": "Float16DType",
    "f4": "Float32DType", "f8": "Float64DType", "f16": "LongDoubleDType", "c8": "Complex64DType",
    "c16": "Complex128DType", "c32": "CLongDoubleDType", "O8": "ObjectDType", "M8": "DateTime64DType",
    "m8": "TimeDelta64DType",
}  # fmt: skip
_NUMPY_SIZED_DTYPES = {"U": "StrDType", "S": "BytesDType", "V": "VoidDType"}


def numpy_dtype_class(args: Args) -> str | None:
    code = args[0] if args else None
    if type(code) is not str:
        return None
    name = NUMPY_DTYPE_CLASSES.get(code)
    if name is None and code[:1] in _NUMPY_SIZED_DTYPES and code[1:].isdigit():
        name = _NUMPY_SIZED_DTYPES[code[:1]]
    return f"numpy.dtypes.{name}" if name else None


def _is_call_of(value: Any, qualname: str) -> bool:
    return isinstance(value, Call) and value.func_name == qualname


def _numbers(max_args: int) -> Callable[[Args], str | None]:
    def fits(args: Args) -> str | None:
        if len(args) <= max_args and all(type(a) in (int, float) for a in args):
            return None
        return f"expected at most {max_args} numbers"

    return fits


def _timezone_fits(args: Args) -> str | None:
    if 1 <= len(args) <= 2 and _is_call_of(args[0], "datetime.timedelta") and all(type(a) is str for a in args[1:]):
        return None
    return "expected (datetime.timedelta(...), name)"


def _datetime_fits(args: Args) -> str | None:
    """As datetime's __reduce__ writes them: the packed value (bytes, or `_codecs.encode`
    of a string, or numbers), then a datetime.timezone; a tzinfo of another class would
    have its methods called."""
    packed = isinstance(args[-1], Call) and _is_call_of(args[-1], "_codecs.encode") if args else True
    value, tz = (args, None) if packed or not isinstance(args[-1], Call) else (args[:-1], args[-1])
    if tz is not None and not _is_call_of(tz, "datetime.timezone"):
        return f"a tzinfo that is {describe_argument(tz)}, not a datetime.timezone"
    if len(value) <= 8 and all(type(a) in (bytes, str, int) or _is_call_of(a, "_codecs.encode") for a in value):
        return None
    return "expected a packed value (bytes or numbers) and a datetime.timezone"


_DATETIME = Vetted("a datetime value type built from its packed bytes or numbers (C code); no callable", _datetime_fits)
DATETIME_CALLS: dict[str, Vetted] = {
    "datetime.datetime": _DATETIME,
    "datetime.date": _DATETIME,
    "datetime.time": _DATETIME,
    "datetime.timedelta": Vetted("a duration from numbers (C code)", _numbers(7)),
    "datetime.timezone": Vetted("a fixed-offset time zone from a timedelta and a name (C code)", _timezone_fits),
}


def _not_at_load(args: Args) -> str | None:
    return "called while loading; an activation is only held by a module and called by its forward"


_ACTIVATION = Vetted(
    "an activation function a module holds (TransformerEncoderLayer.activation): tensor math its forward "
    "calls with tensors; nothing runs at load time",
    _not_at_load,
)
ACTIVATIONS: dict[str, Vetted] = dict.fromkeys(
    [f"torch.nn.functional.{name}"
     for name in ("relu", "silu", "tanh", "sigmoid", "softmax", "log_softmax", "leaky_relu", "elu", "selu", "celu",
                  "glu", "hardtanh", "relu6", "mish", "hardswish", "hardsigmoid", "tanhshrink", "softsign", "softmin")]
    + [f"torch._C._nn.{name}" for name in ("gelu", "softplus", "log_sigmoid")],
    _ACTIVATION,
)  # fmt: skip


# Layer classes a model holds as a factory: torchvision's ResNet keeps `_norm_layer =
# nn.BatchNorm2d` and calls it in `_make_layer` to build its blocks. Held, nothing calls
# it at load time; instantiated (NEWOBJ, never a call), it is the nn.Module its state builds
# (`vetted_classes`). Called by the pickle, it is an unknown call.
_LAYER_FACTORY = Vetted(
    "an nn.Module layer class, held as a model's layer factory (torchvision ResNet's _norm_layer) or "
    "instantiated: never called at load time; its __setstate__ stores the state; no __del__",
    _not_at_load,
)
LAYER_FACTORIES: dict[str, Vetted] = dict.fromkeys(
    [f"torch.nn.modules.batchnorm.{name}" for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")]
    + [f"torch.nn.modules.normalization.{name}" for name in ("GroupNorm", "LayerNorm", "RMSNorm")]
    + [f"torch.nn.modules.instancenorm.{name}" for name in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")],
    _LAYER_FACTORY,
)

# Type markers configs hold as values (omegaconf's metadata keeps `typing.Any` as a node's
# type; configs keep numpy scalar types as dtypes).
TYPE_MARKERS: dict[str, Vetted] = {
    **dict.fromkeys(
        [f"typing.{name}" for name in ("Any", "Optional", "Union", "List", "Dict", "Tuple", "Set", "Callable")],
        Vetted("a typing marker held as a type annotation; nothing calls it at load time", _not_at_load),
    ),
    **dict.fromkeys(
        [f"numpy.{name}" for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                      "float16", "float32", "float64", "complex64", "complex128")],
        Vetted("a numpy scalar type held as a dtype; called, it converts one number (C code)", _plain(1)),
    ),
}  # fmt: skip


def _safe_uuid_fits(args: Args) -> str | None:
    if len(args) == 1 and (args[0] is None or (type(args[0]) is int and args[0] in (0, -1))):
        return None
    return "expected one of the SafeUUID codes 0, -1, None"


def _numbers_or_text(max_args: int) -> Callable[[Args], str | None]:
    """Decimal and Fraction take numbers or a string; any other object would be asked for
    its numerator/denominator or its __float__."""

    def fits(args: Args) -> str | None:
        if 1 <= len(args) <= max_args and all(type(a) in (int, float, str) for a in args):
            return None
        return f"expected at most {max_args} numbers or strings"

    return fits


def _regex_fits(args: Args) -> str | None:
    if len(args) == 2 and type(args[0]) in (str, bytes) and type(args[1]) is int:
        return None
    return "expected (pattern string, flags int)"


# Value types configs and training records hold besides datetime's.
VALUE_CALLS: dict[str, Vetted] = {
    "uuid.SafeUUID": Vetted(
        "whether a UUID was made multiprocessing-safely: an Enum member looked up by its value (a dict lookup)",
        _safe_uuid_fits,
    ),
    "types.SimpleNamespace": Vetted(
        "an attribute bag (a config): built empty, BUILD updates its __dict__ (its state form is checked); "
        "no __setstate__, no __del__",
        _plain(0),
    ),
    "decimal.Decimal": Vetted("a decimal number parsed from a string or a number (C code)", _numbers_or_text(1)),
    "fractions.Fraction": Vetted("a fraction of two integers, or parsed from a string", _numbers_or_text(2)),
    "re._compile": Vetted(
        "a compiled regular expression as copyreg pickles one: the pattern parsed and compiled by sre (no callable)",
        _regex_fits,
    ),
    "random.Random": Vetted(
        "the standard library RNG: built seeded from the system's entropy, BUILD's setstate then loads the "
        "Mersenne Twister words (C code; its state form is checked)",
        _plain(0),
    ),
    "torch.amp.grad_scaler._refresh_per_optimizer_state": Vetted(
        "the default_factory of a pickled GradScaler: returns a fresh "
        "{'stage': OptState.READY, 'found_inf_per_device': {}}",
        _plain(0),
    ),
}


# numpy.core._internal._reconstruct is what numpy before 1.0 pickled (numpy keeps it for them):
# `ndarray.__new__(subtype, shape, dtype)`, the same builder under an older name.
_ARRAY_BUILDERS = frozenset(
    {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.core._internal._reconstruct"}
)
_MAX_DEPTH = 8


def plain_or_arrays(value: Any, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Plain data all the way down, ndarrays (judged as calls of their own) allowed: what a
    numpy RNG's state holds. Anything else would have its methods (`__int__`, `__floordiv__`)
    called by the C code that reads the state. Each container is looked at once (`seen`): a
    pickle's memo shares one list many times over, and a walk of every path would never end."""
    if type(value) in (str, bytes, int, float, bool, type(None)):
        return True
    if depth >= _MAX_DEPTH:
        return False
    if type(value) in (tuple, list, dict):
        seen = set() if seen is None else seen
        if id(value) in seen:
            return True  # a False anywhere already failed the whole check
        seen.add(id(value))
    if type(value) in (tuple, list):
        return all(plain_or_arrays(v, depth + 1, seen) for v in value)
    if type(value) is dict:
        return all(type(k) is str and plain_or_arrays(v, depth + 1, seen) for k, v in value.items())
    return isinstance(value, Call) and value.func_name in _ARRAY_BUILDERS


# numpy.random's own table (`numpy/random/_pickle.py`): name -> bit generator class.
NUMPY_BIT_GENERATORS: dict[str, str] = {
    "MT19937": "numpy.random._mt19937.MT19937", "PCG64": "numpy.random._pcg64.PCG64",
    "PCG64DXSM": "numpy.random._pcg64.PCG64DXSM", "Philox": "numpy.random._philox.Philox",
    "SFC64": "numpy.random._sfc64.SFC64",
}  # fmt: skip
_RNG_PICKLE = "numpy.random._pickle"
BIT_GENERATOR_CTOR = f"{_RNG_PICKLE}.__bit_generator_ctor"


def _bit_generator_class(arg: Any) -> str | None:
    """The class `__bit_generator_ctor(arg)` instantiates: a name of numpy's table, or one of
    its classes (numpy 2 passes the class, and would call any callable it is given)."""
    target = legacy_module_class(arg)
    if isinstance(target, Global):
        return target.qualname if target.qualname in NUMPY_BIT_GENERATORS.values() else None
    return NUMPY_BIT_GENERATORS.get(arg) if type(arg) is str else None


def _bit_generator_ctor_fits(args: Args) -> str | None:
    if not args or (len(args) == 1 and _bit_generator_class(args[0])):
        return None
    return "expected a bit generator name or class of numpy.random's own table"


def _bit_generator_ctor_passes(args: Args) -> Passed:
    return [(args[0], USE_INSTANTIATE)] if args and _is_global(args[0]) else []


def _rng_ctor_fits(args: Args) -> str | None:
    """numpy 2: (a bit generator the pickle built by __bit_generator_ctor); numpy 1: (name,)
    or (name, __bit_generator_ctor), the ctor being called with the name."""
    if len(args) == 1 and _is_call_of(args[0], BIT_GENERATOR_CTOR):
        return None
    named = len(args) in (1, 2) and type(args[0]) is str and args[0] in NUMPY_BIT_GENERATORS
    ctor = legacy_module_class(args[1]) if len(args) == 2 else None
    if not args or (named and (ctor is None or (isinstance(ctor, Global) and ctor.qualname == BIT_GENERATOR_CTOR))):
        return None
    return "expected a bit generator (or its name, and numpy's own __bit_generator_ctor)"


def _rng_ctor_passes(args: Args) -> Passed:
    return [(args[1], USE_CALL)] if len(args) == 2 and _is_global(args[1]) else []


def _seed_sequence_fits(args: Args) -> str | None:
    target = legacy_module_class(args[0]) if args else None
    if len(args) == 3 and isinstance(target, Global) and target.qualname == SEED_SEQUENCE and type(args[1]) is int:
        return None if args[2] is None else "expected no state in the arguments (BUILD gives it)"
    return "expected (numpy.random.bit_generator.SeedSequence, checksum, None)"


SEED_SEQUENCE = "numpy.random.bit_generator.SeedSequence"
SEED_SEQUENCE_UNPICKLER = "numpy.random.bit_generator.__pyx_unpickle_SeedSequence"
_RNG_CTOR = "{}: numpy's pickling helper builds it from a bit generator of numpy's own table; BUILD then sets its state"
NUMPY_RANDOM_CALLS: dict[str, Vetted] = {
    BIT_GENERATOR_CTOR: Vetted(
        "numpy's pickling helper: instantiates a bit generator class of numpy's own table (by name or class); "
        "BUILD then sets its state (C code reading ints and arrays)",
        _bit_generator_ctor_fits,
        _bit_generator_ctor_passes,
        result_class=lambda args: _bit_generator_class(args[0]) if args else NUMPY_BIT_GENERATORS["MT19937"],
    ),
    f"{_RNG_PICKLE}.__generator_ctor": Vetted(
        _RNG_CTOR.format("a numpy.random.Generator"),
        _rng_ctor_fits,
        _rng_ctor_passes,
        result_class=lambda args: "numpy.random._generator.Generator",
    ),
    f"{_RNG_PICKLE}.__randomstate_ctor": Vetted(
        _RNG_CTOR.format("a numpy.random.RandomState"),
        _rng_ctor_fits,
        _rng_ctor_passes,
        result_class=lambda args: "numpy.random.mtrand.RandomState",
    ),
    SEED_SEQUENCE_UNPICKLER: Vetted(
        "the Cython unpickler of a SeedSequence: SeedSequence.__new__ (refusing another class) after a checksum "
        "check; BUILD stores the entropy, pool array and spawn key",
        _seed_sequence_fits,
        _first_instantiated,
    ),
}


_CONSTRUCTOR = "builds a {} from the plain data it is given; calls nothing of it"
_RECONSTRUCT = Vetted(
    "an empty ndarray of the given subtype (judged as instantiated) that BUILD fills from bytes, "
    "or from a list for object arrays; C code, no callable involved",
    _reconstruct_fits,
    _first_instantiated,
)
_SCALAR = Vetted(
    "a numpy scalar from a dtype and its bytes; for an object dtype it hands back the object the pickle already built",
    _scalar_fits,
)
_FROMBUFFER = Vetted(
    "protocol 5's array: numpy.frombuffer over bytes the pickle holds, reshaped; C code",
    _frombuffer_fits,
)

VETTED: dict[str, Vetted] = {
    "builtins.dict": Vetted(_CONSTRUCTOR.format("dict"), _plain(1), container="dict"),
    "builtins.list": Vetted(_CONSTRUCTOR.format("list"), _plain(1), container="list"),
    "builtins.tuple": Vetted(_CONSTRUCTOR.format("tuple"), _plain(1)),
    "builtins.frozenset": Vetted(_CONSTRUCTOR.format("frozenset"), _plain(1)),
    "builtins.int": Vetted("parses an integer from a number, string or bytes", _plain(2)),
    "builtins.float": Vetted("parses a float from a number or string", _plain(1)),
    "builtins.bool": Vetted("the truth value of plain data", _plain(1)),
    "builtins.str": Vetted(
        "text from plain data, or bytes decoded by name (the codec registry imports only modules "
        "of the encodings package)",
        _plain(3),
    ),
    "builtins.bytes": Vetted("bytes from bytes, or a string and an encoding name", _bytes_fits),
    "builtins.len": Vetted("the length of plain data (its own C code; nothing of the pickle's is called)", _plain(1)),
    "builtins.slice": Vetted("a slice of plain values", _plain(3)),
    "builtins.range": Vetted("a lazy range of integers: nothing is allocated", _plain(3)),
    "collections.defaultdict": Vetted(
        "a dict whose default_factory (judged as a call) runs only when a missing key is read",
        _defaultdict_fits,
        _defaultdict_passes,
        container="dict",
    ),
    "collections.deque": Vetted("a double-ended queue of plain data and a maximum length", _plain(2), container="list"),
    "numpy.core.multiarray._reconstruct": _RECONSTRUCT,
    "numpy._core.multiarray._reconstruct": _RECONSTRUCT,
    "numpy.core._internal._reconstruct": _RECONSTRUCT,
    "numpy.dtype": Vetted(
        "a dtype parsed from its type string (C code); BUILD then sets byte order and fields",
        _dtype_fits,
        result_class=numpy_dtype_class,
    ),
    "numpy.core.multiarray.scalar": _SCALAR,
    "numpy.core.numeric._frombuffer": _FROMBUFFER,
    "numpy._core.numeric._frombuffer": _FROMBUFFER,
    "numpy._core.multiarray.scalar": _SCALAR,
    "copyreg._reconstructor": Vetted(
        "protocols 0 and 1's object.__new__(cls): cls is judged as instantiated, and a base other "
        "than object, whose __init__ runs, as called",
        _reconstructor_fits,
        _reconstructor_passes,
    ),
    "copyreg.__newobj__": Vetted("cls.__new__(cls, *args), as the NEWOBJ opcode", _newobj_fits, _first_instantiated),
    "copyreg.__newobj_ex__": Vetted(
        "cls.__new__(cls, *args, **kwargs), as the NEWOBJ_EX opcode", _newobj_ex_fits, _first_instantiated
    ),
    **TORCHSCRIPT_BUILDERS,
    **DCP_METADATA_CALLS,
    **DATETIME_CALLS,
    **VALUE_CALLS,
    **NUMPY_RANDOM_CALLS,
    **ACTIVATIONS,
    **LAYER_FACTORIES,
    **TYPE_MARKERS,
    **ENUM_CALLS,
}

# torch's own allowlisted containers, for judging what SETITEMS and APPENDS do to them.
TORCH_CONTAINERS: dict[str, str] = {"collections.OrderedDict": "dict", "collections.Counter": "dict"}


def container_kind(qualname: str) -> str | None:
    vetted = VETTED.get(qualname)
    if vetted:
        return vetted.container
    return "dict" if qualname in ATTRIBUTE_DICTS else TORCH_CONTAINERS.get(qualname)
