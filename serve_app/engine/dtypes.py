"""Compute dtypes the engine accepts, and 'auto' resolution from the CPU's flags."""

from __future__ import annotations

# Names accepted for ``dtype`` -> canonical name (torch dtypes are looked up by the model runner).
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "int8": "int8"}


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16). Elsewhere (e.g. the Skylake and
    Cascade Lake cores of m5 instances) bfloat16 is emulated and slower than float32."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(dtype: str) -> str:
    """'auto' -> 'bfloat16' where the CPU has native bf16, else 'float32'; aliases -> canonical names."""
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[dtype]
