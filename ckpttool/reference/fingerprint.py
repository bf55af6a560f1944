"""What a recorded evaluation number depends on besides the weights.

The last bits of a float32 sum depend on the order in which a kernel adds its
products, and that order is chosen at run time, not only by the torch version:

- ATen's own vectorised kernels by `torch.backends.cpu.get_cpu_capability()`
  (which `ATEN_CPU_CAPABILITY` can lower);
- oneDNN (convolutions) and MKL or OpenBLAS (matrix products) by their own CPU
  dispatch: the instruction-set extensions present, the vendor, and block sizes
  tuned per processor model (cache sizes), each overridable by environment
  variables;
- on a GPU, the device model, CUDA and cuDNN versions and the TF32 settings.

Two machines with equal fingerprints run the same kernels in the same order, so
evaluation there repeats bit for bit. Anything else is only promised to agree within
a tolerance. A field that cannot be read is recorded as "unknown": it then compares
equal only to another "unknown", which errs towards the tolerant comparison.

Thread count is not part of it: the reference evaluation always runs on one thread.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

UNKNOWN = "unknown"

# Instruction-set extensions that oneDNN, MKL or OpenBLAS choose kernels by, as
# `/proc/cpuinfo` names them (x86-64 and aarch64).
DISPATCH_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "asimdhp",
    "asimddp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)

# `/proc/cpuinfo` fields that tell processor generations apart (x86-64, aarch64).
CPU_MODEL_FIELDS = ("cpu family", "model", "stepping", "cache size", "CPU implementer", "CPU part", "CPU variant")

# Environment variables that override a library's kernel choice.
DISPATCH_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "NVIDIA_TF32_OVERRIDE",
    "CUBLAS_WORKSPACE_CONFIG",
)

Fingerprint = dict[str, str]


def machine_fingerprint(device: torch.device) -> Fingerprint:
    """The fingerprint of evaluating on `device` in this process, as flat strings."""
    fingerprint = {
        "torch": torch.__version__,
        "torch_git": str(torch.version.git_version or UNKNOWN),
        "device": device.type,
        "machine": platform.machine() or UNKNOWN,
        **_cpu_fields(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "onednn": _onednn_version(),
        "blas": _build_setting("BLAS_INFO"),
        "lapack": _build_setting("LAPACK_INFO"),
        "mkl": _mkl_version(),
        "environment": _dispatch_environment(),
    }
    if device.type == "cuda":
        fingerprint.update(_cuda_fields(device))
    return fingerprint


def differences(recorded: Fingerprint, here: Fingerprint) -> list[str]:
    """Each field that differs, as `name: recorded -> here`; empty when equal."""
    names = sorted(set(recorded) | set(here))
    return [
        f"{name}: {recorded.get(name, 'absent')} -> {here.get(name, 'absent')}"
        for name in names
        if recorded.get(name) != here.get(name)
    ]


def _cpu_fields() -> dict[str, str]:
    info = _cpuinfo()
    present = set(info.get("flags", info.get("Features", "")).split())
    return {
        "cpu_vendor": info.get("vendor_id", info.get("CPU implementer", "")) or UNKNOWN,
        # The model stands for what the flags do not show: cache sizes and per-model
        # kernel tuning in MKL and oneDNN.
        "cpu_model": _cpu_model(info),
        "cpu_flags": " ".join(flag for flag in DISPATCH_FLAGS if flag in present) if present else UNKNOWN,
    }


def _cpu_model(info: dict[str, str]) -> str:
    """Name, family/model/stepping and cache size: a virtual machine's name alone
    ("AMD EPYC") can stand for several generations."""
    name = info.get("model name", "") or platform.processor()
    numbers = [f"{field} {info[field]}" for field in CPU_MODEL_FIELDS if info.get(field)]
    return " / ".join(part for part in (name, ", ".join(numbers)) if part) or UNKNOWN


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of `/proc/cpuinfo`; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), " ".join(value.split()))
    return fields


def _onednn_version() -> str:
    if not torch._C._has_mkldnn:
        return "absent"
    if not torch.backends.mkldnn.enabled:
        return "disabled"
    return _config_match(r"MKL-DNN (v[\w.]+)")


def _mkl_version() -> str:
    if not torch._C.has_mkl:
        return "absent"
    return _config_match(r"Math Kernel Library Version ([\w.-]+)")


def _build_setting(name: str) -> str:
    return _config_match(rf"\b{name}=([^,\s]+)")


def _config_match(pattern: str) -> str:
    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else UNKNOWN


def _dispatch_environment() -> str:
    settings = [f"{name}={os.environ[name]}" for name in DISPATCH_VARIABLES if name in os.environ]
    return " ".join(settings) or "none"


def _cuda_fields(device: torch.device) -> dict[str, str]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "cuda_device": torch.cuda.get_device_name(index),
        "cuda_capability": f"{major}.{minor}",
        "cuda": str(torch.version.cuda or UNKNOWN),
        "cudnn": str(torch.backends.cudnn.version() or UNKNOWN),  # type: ignore[no-untyped-call]
        "tf32": f"matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32}",
    }
