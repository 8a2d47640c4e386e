"""The C++ kernels (csrc/) compiled for this CPU on first use and cached by torch.

They are compiled with -march=native, so a build runs only on the CPU it was made for. The extension's name
carries a hash of the sources, the flags and the CPU's feature flags: machines that share a home directory (a
cluster) each get their own build instead of loading one made for another CPU (which could die of SIGILL), and
a change to a source builds anew without anyone bumping a version."""
from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from pathlib import Path

from ..core.devices import cpu_flags

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("sparse.cpp", "int8.cpp", "attention.cpp", "norm.cpp", "bindings.cpp")
HEADERS = ("common.h", "tiles.h", "kernels.h")
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def build_name(flags: frozenset[str], machine: str) -> str:
    """The extension's name for these sources on a CPU with these feature flags."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(machine.encode() + b"\0" + " ".join(sorted(flags)).encode())
    return f"lth_kernels_{digest.hexdigest()[:12]}"


def this_cpu() -> tuple[frozenset[str], str]:
    """This CPU's feature flags and architecture; where the flags cannot be read, the host stands in for them, so
    that two unknown CPUs never share a build."""
    flags = cpu_flags()
    machine = platform.machine()
    return (flags, machine) if flags else (frozenset(), f"{machine} {platform.processor()} {platform.node()}")


@lru_cache(maxsize=1)
def native():
    """The compiled module, or None and the reason it is not there."""
    if os.environ.get("LTH_NO_NATIVE"):
        return None, "LTH_NO_NATIVE is set"
    try:
        from torch.utils.cpp_extension import load  # imports setuptools and friends: only when a kernel is wanted

        module = load(build_name(*this_cpu()), [str(CSRC / name) for name in SOURCES], extra_cflags=list(CFLAGS),
                      extra_ldflags=list(LDFLAGS), extra_include_paths=[str(CSRC)], verbose=False)
        return module, None
    except Exception as exc:  # no compiler, no ninja, an unsupported platform: numba or dense instead
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
