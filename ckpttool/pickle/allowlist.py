"""Which globals a pickle may name, judged by torch's `weights_only` rules.

`TORCH_ALLOWED` is the set torch 2.14's `_weights_only_unpickler._get_allowed_globals()`
accepts without help (a test compares it with the installed torch). Anything else
needs `torch.serialization.add_safe_globals`, except modules torch blocks outright.
`KNOWN_DANGEROUS` only names the usual gadgets in reports: the verdict comes from
the allowlist, because a blocklist can never be complete.
"""

from __future__ import annotations

_ALLOWED_BY_MODULE: dict[str, tuple[str, ...]] = {
    "_codecs": ("encode",),
    "builtins": (
        "bytearray",
        "complex",
        "set",
    ),
    "collections": (
        "Counter",
        "OrderedDict",
    ),
    "torch": (
        "BFloat16Storage",
        "BFloat16Tensor",
        "BoolStorage",
        "BoolTensor",
        "ByteStorage",
        "ByteTensor",
        "CharStorage",
        "CharTensor",
        "ComplexDoubleStorage",
        "ComplexFloatStorage",
        "DoubleStorage",
        "DoubleTensor",
        "FloatStorage",
        "FloatTensor",
        "HalfStorage",
        "HalfTensor",
        "IntStorage",
        "IntTensor",
        "LongStorage",
        "LongTensor",
        "QInt32Storage",
        "QInt8Storage",
        "QUInt2x4Storage",
        "QUInt4x2Storage",
        "QUInt8Storage",
        "ShortStorage",
        "ShortTensor",
        "Size",
        "Tensor",
        "bcomplex32",
        "bfloat16",
        "bits16",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "bits8",
        "bool",
        "complex128",
        "complex32",
        "complex64",
        "device",
        "float16",
        "float32",
        "float4_e2m1fn_x2",
        "float64",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "int1",
        "int16",
        "int2",
        "int3",
        "int32",
        "int4",
        "int5",
        "int6",
        "int64",
        "int7",
        "int8",
        "per_channel_affine",
        "per_channel_affine_float_qparams",
        "per_channel_symmetric",
        "per_tensor_affine",
        "per_tensor_symmetric",
        "qint32",
        "qint8",
        "quint2x4",
        "quint4x2",
        "quint8",
        "uint1",
        "uint16",
        "uint2",
        "uint3",
        "uint32",
        "uint4",
        "uint5",
        "uint6",
        "uint64",
        "uint7",
        "uint8",
    ),
    "torch._tensor": ("_rebuild_from_type_v2",),
    "torch._utils": (
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_nested_tensor",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_wrapper_subclass",
    ),
    "torch.cuda": (
        "BFloat16Storage",
        "BFloat16Tensor",
        "BoolStorage",
        "BoolTensor",
        "ByteStorage",
        "ByteTensor",
        "CharStorage",
        "CharTensor",
        "ComplexDoubleStorage",
        "ComplexFloatStorage",
        "DoubleStorage",
        "DoubleTensor",
        "FloatStorage",
        "FloatTensor",
        "HalfStorage",
        "HalfTensor",
        "IntStorage",
        "IntTensor",
        "LongStorage",
        "LongTensor",
        "ShortStorage",
        "ShortTensor",
    ),
    "torch.cuda.sparse": (
        "BFloat16Tensor",
        "ByteTensor",
        "CharTensor",
        "DoubleTensor",
        "FloatTensor",
        "HalfTensor",
        "IntTensor",
        "LongTensor",
        "ShortTensor",
    ),
    "torch.nn.parameter": ("Parameter",),
    "torch.serialization": ("_get_layout",),
    "torch.sparse": (
        "BFloat16Tensor",
        "ByteTensor",
        "CharTensor",
        "DoubleTensor",
        "FloatTensor",
        "HalfTensor",
        "IntTensor",
        "LongTensor",
        "ShortTensor",
    ),
    "torch.storage": (
        "TypedStorage",
        "UntypedStorage",
    ),
}

TORCH_ALLOWED: frozenset[str] = frozenset(
    f"{module}.{name}" for module, names in _ALLOWED_BY_MODULE.items() for name in names
)

# torch refuses these modules even when a user allowlists something from them.
BLOCKED_MODULES: frozenset[str] = frozenset({"sys", "os", "posix", "nt"})

KNOWN_DANGEROUS_MODULES: frozenset[str] = frozenset(
    {
        "subprocess", "pty", "runpy", "pip", "pydoc", "timeit", "cProfile", "profile",
        "ctypes", "importlib", "code", "codeop", "marshal", "shutil", "socket", "webbrowser",
        "urllib", "urllib.request", "http", "requests", "asyncio", "multiprocessing",
        "cloudpickle", "dill", "pickle", "_pickle", "shelve", "tempfile", "_io", "io",
        "commands", "popen2", "platform", "bdb", "pdb", "trace", "sqlite3", "zipimport",
        "cloudpickle.cloudpickle", "joblib",
    }
)  # fmt: skip

KNOWN_DANGEROUS: frozenset[str] = frozenset(
    {
        "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr",
        "builtins.setattr", "builtins.delattr", "builtins.__import__", "builtins.open",
        "builtins.globals", "builtins.locals", "builtins.vars", "builtins.breakpoint",
        "builtins.input", "builtins.help", "builtins.memoryview", "builtins.type",
        "builtins.object", "functools.partial", "functools.reduce", "operator.attrgetter",
        "operator.methodcaller", "operator.itemgetter", "types.CodeType", "types.FunctionType",
        "types.MethodType", "pkgutil.resolve_name", "pydoc.pipepager", "pydoc.locate",
        "torch.load", "torch.jit.load", "torch.serialization.load", "torch.utils.collect_env.run",
        "torch._inductor.codecache.compile_file", "numpy.load", "numpy.testing._private.utils.runstring",
        "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
    }
)  # fmt: skip


def is_allowed(qualname: str) -> bool:
    return qualname in TORCH_ALLOWED


def is_blocked(module: str) -> bool:
    return module in BLOCKED_MODULES or module.split(".", 1)[0] in BLOCKED_MODULES


def is_known_dangerous(module: str, qualname: str) -> bool:
    if qualname in KNOWN_DANGEROUS or is_blocked(module):
        return True
    return module in KNOWN_DANGEROUS_MODULES or module.split(".", 1)[0] in KNOWN_DANGEROUS_MODULES
