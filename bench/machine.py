"""What machine a benchmark ran on: CPU model and ISA flags, memory, load, library versions.

Every benchmark result records :func:`cpu_info` because the numbers depend on it: bfloat16 is only fast with
native bf16 (AMX or AVX-512 BF16), and our users' m5 instances (Xeon, AVX-512, no bf16, no AMX) run float32.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

# The instruction-set flags that decide which kernels run (matmul width, bf16/int8 dot products).
ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")


def isa_flags(cpuinfo_text: str) -> list[str]:
    """Pure: the sorted ISA flags of the first ``flags`` line of /proc/cpuinfo text."""
    for line in cpuinfo_text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted({f for f in flags if f.startswith(ISA_PREFIXES)})
    return []


def cpu_info(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> dict:
    """CPU model, ISA flags and whether bf16 runs natively (what ``dtype: auto`` keys on)."""
    try:
        text = cpuinfo_path.read_text()
    except OSError:
        text = ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = isa_flags(text)
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "avx512": "avx512f" in flags,
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
    }


def machine_info(shared_note: Optional[str]) -> dict:
    mem_gib = None
    try:
        import psutil

        mem_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    return {
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": shared_note or "",
    }


def versions() -> dict:
    out = {}
    for mod in ("torch", "transformers", "ray", "fastapi", "uvicorn", "httpx"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out
