"""ckpttool's copies of torch's rules, compared with the installed torch itself."""

from __future__ import annotations

import pickle

import torch
import torch._weights_only_unpickler as weights_only

from ckpttool.dtypes import BY_SAFETENSORS, DTYPES, STORAGE_DTYPES
from ckpttool.pickle.allowlist import BLOCKED_MODULES, TORCH_ALLOWED
from ckpttool.pickle.opcodes import NAMES, TORCH_OPCODES


def test_allowlist_is_torchs() -> None:
    assert set(weights_only._get_allowed_globals()) == TORCH_ALLOWED


def test_blocked_modules_are_torchs() -> None:
    assert set(weights_only._blocklisted_modules) == BLOCKED_MODULES


def test_opcodes_are_the_ones_torchs_unpickler_handles() -> None:
    # The weights_only unpickler imports exactly the opcode constants it decodes.
    opcode_bytes = {bytes([code]): name for code, name in NAMES.items()}
    handled = {
        opcode_bytes[value]
        for attr, value in vars(weights_only).items()
        if attr.isupper() and isinstance(value, bytes) and value in opcode_bytes
        if getattr(pickle, attr, None) == value
    }
    assert handled == TORCH_OPCODES


def test_storage_classes_map_to_torchs_dtypes() -> None:
    for dtype, storage_type in torch.storage._dtype_to_storage_type_map().items():
        assert STORAGE_DTYPES[storage_type] == str(dtype).removeprefix("torch.")


def test_dtype_sizes_are_torchs() -> None:
    for name, dtype in DTYPES.items():
        torch_dtype = getattr(torch, name, None)
        if isinstance(torch_dtype, torch.dtype):
            assert dtype.bits == torch_dtype.itemsize * 8, name


def test_safetensors_codes_are_the_librarys() -> None:
    from safetensors.torch import _TYPES

    for code, torch_dtype in _TYPES.items():
        if torch_dtype is not None:
            assert BY_SAFETENSORS[code].name == str(torch_dtype).removeprefix("torch.")


def test_opcode_table_is_pickletools() -> None:
    import pickletools

    from ckpttool.pickle.opcodes import ARGUMENT_BYTES

    prefix = {
        pickletools.UP_TO_NEWLINE: 0,
        pickletools.TAKEN_FROM_ARGUMENT1: 1,
        pickletools.TAKEN_FROM_ARGUMENT4: 4,
        pickletools.TAKEN_FROM_ARGUMENT4U: 4,
        pickletools.TAKEN_FROM_ARGUMENT8U: 8,
    }
    assert NAMES == {ord(op.code): op.name for op in pickletools.opcodes}
    for op in pickletools.opcodes:
        expected = (op.arg.n if op.arg.n >= 0 else prefix[op.arg.n]) if op.arg else 0
        assert ARGUMENT_BYTES[ord(op.code)] == expected, op.name
