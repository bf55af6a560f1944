"""Which globals a pickle may name: torch's `weights_only` allowlist, and the known gadgets.

`TORCH_ALLOWED` is the set torch 2.14's `_weights_only_unpickler._get_allowed_globals()`
accepts without help (a test compares it with the installed torch). Anything else
needs `torch.serialization.add_safe_globals`, except modules torch blocks outright.

The verdict is allowlist-first: a callable that is neither on torch's list nor vetted
(`ckpttool.pickle.vetted`) is at least an unknown call. `danger_reason` only puts a name
on the known gadgets — the modules and functions torch blocks and those the public
scanners' test suites build exploits from — because a blocklist can never be complete.
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

# Modules whose every name is a known gadget (a prefix covers its submodules): they run
# programs or code, load or fetch code or files, or reach the interpreter's internals.
_DANGEROUS_MODULES: dict[str, str] = {
    **dict.fromkeys(
        ("subprocess", "_posixsubprocess", "pty", "commands", "popen2", "multiprocessing", "torch.multiprocessing",
         "asyncio", "signal", "_thread", "threading"),
        "runs programs or threads",
    ),
    **dict.fromkeys(
        ("runpy", "code", "codeop", "pdb", "bdb", "trace", "timeit", "cProfile", "profile", "pydoc", "doctest",
         "test.support", "unittest.mock",
         "importlib", "imp", "zipimport", "pkgutil", "marshal", "ctypes", "_ctypes", "site", "ensurepip",
         "venv", "pip", "setuptools", "distutils", "inspect", "gc", "sysconfig"),
        "imports, compiles or runs code",
    ),
    **dict.fromkeys(
        ("pickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "copyreg._extension_registry",
         "torch.utils.data.datapipes.utils.decoder", "torch.utils.model_dump", "torch.distributed.flight_recorder",
         # dcp.load: pickle.load of .metadata, torch.load(weights_only=False) of its entries
         "torch.distributed.checkpoint.format_utils", "torch.distributed.checkpoint.state_dict_loader",
         "torch.distributed.checkpoint.load", "torch.distributed.checkpoint.load_state_dict"),
        "unpickles more data (a second, unscanned pickle)",
    ),
    **dict.fromkeys(
        ("io", "_io", "shutil", "tempfile", "glob", "fileinput", "sqlite3", "zipfile",
         "tarfile", "mmap", "fcntl", "numpy.lib.format", "numpy.lib._format_impl", "numpy.lib.npyio",
         "numpy.lib._npyio_impl"),
        "reads or writes files",
    ),
    **dict.fromkeys(
        ("socket", "_socket", "ssl", "urllib", "http", "ftplib", "smtplib", "telnetlib", "xmlrpc", "imaplib",
         "poplib", "nntplib",
         "webbrowser", "requests", "aiohttp", "httpx"),
        "opens network connections or programs",
    ),
    **dict.fromkeys(
        ("torch.jit", "torch.hub", "torch.utils.model_zoo", "torch._inductor", "torch._dynamo", "torch.fx",
         "torch.package", "torch.utils.collect_env", "torch.utils.cpp_extension", "torch._C._jit",
         "torch.distributed.rpc", "numpy.testing", "numpy.f2py", "numpy.distutils"),
        "compiles, loads or runs code",
    ),
}  # fmt: skip

# Single names that are gadgets in otherwise ordinary modules.
_DANGEROUS_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ("builtins.eval", "builtins.exec", "builtins.compile", "builtins.execfile", "builtins.__import__",
         "builtins.breakpoint", "builtins.input", "builtins.help", "builtins.exit", "builtins.quit",
         "builtins.open"),
        "runs code, reads input or touches files",
    ),
    **dict.fromkeys(
        ("builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.hasattr", "builtins.globals",
         "builtins.locals", "builtins.vars", "builtins.dir", "builtins.type", "builtins.super",
         "builtins.classmethod", "builtins.staticmethod", "builtins.property", "builtins.memoryview",
         "builtins.apply", "builtins.reload", "builtins.__build_class__"),
        "reaches attributes, classes or frames: the first step of most gadget chains",
    ),
    **dict.fromkeys(
        ("builtins.map", "builtins.filter", "builtins.iter", "builtins.next"),
        "calls a callable it is given",
    ),
    **dict.fromkeys(
        ("functools.partial", "functools.reduce", "functools.partialmethod", "functools.cmp_to_key",
         "operator.attrgetter", "operator.methodcaller", "operator.itemgetter", "operator.getitem",
         "operator.setitem", "operator.call", "types.CodeType", "types.FunctionType", "types.MethodType",
         "types.LambdaType", "types.ModuleType", "types.new_class"),
        "builds callables or code objects",
    ),
    **dict.fromkeys(
        ("torch.load", "torch.serialization.load", "torch.serialization._load", "torch.storage._load_from_bytes",
         "torch._weights_only_unpickler.load", "torch.ops.load_library", "torch.classes.load_library",
         "torch._ops.load_library", "numpy.load", "numpy.lib.npyio.load", "numpy.lib._npyio_impl.load",
         "numpy.fromfile", "numpy.loadtxt", "numpy.genfromtxt", "numpy.memmap"),
        "loads another file, with pickle or native code",
    ),
    "torch.nn.modules.module.Module.register_forward_hook": "installs a callable that runs later",
    **dict.fromkeys(
        ("torch.save", "torch.serialization.save", "numpy.save", "numpy.savez", "numpy.savez_compressed",
         "numpy.savetxt", "numpy.fromregex"),
        "reads or writes files",
    ),
    "copyreg.add_extension": "rewires extension codes",
    "codecs.open": "reads or writes files",
    "linecache.getline": "reads files",
    "tensorflow.io.read_file": "reads files",
    "tensorflow.io.write_file": "writes files",
    "keras.models.load_model": "loads another model file",
}  # fmt: skip


# Members of a gadget module above that were read one by one and are pure: TorchScript's
# pickle builders (`torch/jit/_pickle.py`: each returns its argument, or an int, unchanged).
# Each is vetted, with its argument form, in `ckpttool.pickle.vetted`; the rest of
# `torch.jit` (load, script, compile) stays a known gadget.
PURE_MEMBERS: frozenset[str] = frozenset(
    f"torch.jit._pickle.{name}"
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                 "build_tensor_from_id", "restore_type_tag")
)  # fmt: skip
# Classes of a gadget module read the same way, each vetted as a class in
# `ckpttool.pickle.vetted_classes`: joblib's array placeholder (joblib.load, not the class,
# reads the array) and io's in-memory buffer (it opens no file).
PURE_CLASSES: frozenset[str] = frozenset({"joblib.numpy_pickle.NumpyArrayWrapper", "_io.BytesIO"})

# Module-level functions whose own name is a dunder: pickle's protocol 0 and 1 helpers.
_DUNDER_FUNCTIONS = frozenset({"copyreg.__newobj__", "copyreg.__newobj_ex__"})


def is_allowed(qualname: str) -> bool:
    return qualname in TORCH_ALLOWED


def is_blocked(module: str) -> bool:
    return module in BLOCKED_MODULES or module.split(".", 1)[0] in BLOCKED_MODULES


def _spellable(dotted: str) -> bool:
    """Whether an import statement spells `dotted` as is: identifiers that Python's
    source normalisation (NFKC) leaves unchanged."""
    if dotted.isascii():  # NFKC leaves ASCII as it is
        return all(p.isidentifier() for p in dotted.split("."))
    import unicodedata

    return all(p.isidentifier() and unicodedata.normalize("NFKC", p) == p for p in dotted.split("."))


def danger_reason(module: str, name: str) -> str | None:
    """Why `module.name` is a known gadget, or None when it is not a known one."""
    if not (_spellable(module) and _spellable(name)):
        # `x import y;os.system(...);from x`: pickle imports no such module, but the printed
        # `from MODULE import NAME` line or `--allow MODULE.NAME` would run what it spells.
        return (
            "a name no import statement spells (not Python identifiers): no class is named so; only an attack "
            "names one, and a remedy printed with it would run code when pasted"
        )
    if is_blocked(module):
        return f"module {module} runs programs and touches the system; torch blocks it even when allowlisted"
    qualname = f"{module}.{name}"
    if qualname not in _DUNDER_FUNCTIONS and any(p.startswith("__") and p.endswith("__") for p in name.split(".")):
        return "reaches a dunder attribute (an object's internals): only an attack names one"
    if qualname in _DANGEROUS_NAMES:
        return _DANGEROUS_NAMES[qualname]
    if qualname in PURE_MEMBERS or qualname in PURE_CLASSES:
        return None
    for prefix in _prefixes(qualname):
        if prefix in _DANGEROUS_MODULES:
            return f"{prefix}: {_DANGEROUS_MODULES[prefix]}"
    return _reached_through(module, name)


def _reached_through(module: str, name: str) -> str | None:
    """`platform.os.system`, `typing.types.CodeType`: a dotted name whose tail names a known
    gadget once the attribute it goes through is taken for the module it usually is."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        reached = danger_reason(".".join(parts[:i]), ".".join(parts[i:]))
        if reached:
            return f"{'.'.join(parts)} through {module}: {reached}"
    return None


def _prefixes(qualname: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']: a module entry covers its submodules and members."""
    parts = qualname.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]
