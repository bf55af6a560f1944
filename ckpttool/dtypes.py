"""Element types: torch's names, their sizes, and how each format spells them.

Names are torch's without the `torch.` prefix. Sizes are in bits so that the
sub-byte safetensors types (F4, F6_*) fit the same table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    safetensors: str | None  # the safetensors code, None where the format has none
    kind: str  # "float", "complex", "int", "uint", "bool", "quantized", "other"

    @property
    def itemsize(self) -> int:
        """Bytes per element (sub-byte types count as 1 per packed byte)."""
        return max(1, self.bits // 8)

    @property
    def is_floating(self) -> bool:
        return self.kind == "float"


_TABLE = [
    DType("float64", 64, "F64", "float"),
    DType("float32", 32, "F32", "float"),
    DType("float16", 16, "F16", "float"),
    DType("bfloat16", 16, "BF16", "float"),
    DType("float8_e4m3fn", 8, "F8_E4M3", "float"),
    DType("float8_e4m3fnuz", 8, "F8_E4M3FNUZ", "float"),
    DType("float8_e5m2", 8, "F8_E5M2", "float"),
    DType("float8_e5m2fnuz", 8, "F8_E5M2FNUZ", "float"),
    DType("float8_e8m0fnu", 8, "F8_E8M0", "float"),
    DType("float4_e2m1fn_x2", 8, None, "other"),
    DType("complex128", 128, None, "complex"),
    DType("complex64", 64, "C64", "complex"),
    DType("complex32", 32, None, "complex"),
    DType("int64", 64, "I64", "int"),
    DType("int32", 32, "I32", "int"),
    DType("int16", 16, "I16", "int"),
    DType("int8", 8, "I8", "int"),
    DType("uint64", 64, "U64", "uint"),
    DType("uint32", 32, "U32", "uint"),
    DType("uint16", 16, "U16", "uint"),
    DType("uint8", 8, "U8", "uint"),
    DType("bool", 8, "BOOL", "bool"),
    DType("qint8", 8, None, "quantized"),
    DType("quint8", 8, None, "quantized"),
    DType("qint32", 32, None, "quantized"),
    DType("quint4x2", 8, None, "quantized"),
    DType("quint2x4", 8, None, "quantized"),
    # safetensors-only sub-byte floats: no torch dtype holds one element of these.
    DType("F4", 4, "F4", "other"),
    DType("F6_E2M3", 6, "F6_E2M3", "other"),
    DType("F6_E3M2", 6, "F6_E3M2", "other"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _TABLE if d.safetensors}

# torch's legacy typed-storage classes (`torch.FloatStorage`, `torch.cuda.HalfStorage`, ...)
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
STORAGE_MODULES = frozenset({"torch", "torch.cuda", "torch.storage"})


# The dtypes `convert --dtype` casts to, and the names people also type for them
# (torch's own aliases torch.half and torch.float among them).
CAST_TARGETS = ("float16", "bfloat16", "float32")
CAST_ALIASES = {
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
}


def cast_target(name: str) -> str | None:
    """`fp16`, `torch.half`, `BF16`, ... -> torch's name of a cast target; None if not one."""
    key = name.strip().lower().removeprefix("torch.")
    key = CAST_ALIASES.get(key, key)
    return key if key in CAST_TARGETS else None


def storage_dtype(module: str, name: str) -> str | None:
    """dtype of a pickled storage class, or None when it is not one."""
    if module not in STORAGE_MODULES:
        return None
    return STORAGE_DTYPES.get(name)
