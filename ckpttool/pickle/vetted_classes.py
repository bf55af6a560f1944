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
    "joblib.numpy_pickle.NumpyArrayWrapper": (
        "joblib's array placeholder: BUILD stores shape, order and dtype; joblib.load replaces it by the array "
        "it reads from the bytes after it (a pickle of its own for object arrays, judged as such)"
    ),
}  # fmt: skip

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
