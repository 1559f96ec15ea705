"""Compile (once per source/torch/CPU combination) and load the native kernel library.

The library is built with torch's JIT extension builder into
<ember_home>/kernels/<digest>/, where the digest covers the C++ sources, the torch version, the
compiler flags and the CPU's feature flags (the code is compiled with -march=native). Later
processes load the finished .so directly, without touching the compiler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ember import envs

log = logging.getLogger("ember.kernels")

LIBRARY_NAME = "ember_kernels"
SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = (
    "ops.cpp",
    "gemv.cpp",
    "gemm_bf16.cpp",
    "gemm_int8.cpp",
    "fused.cpp",
    "prefill_attention.cpp",
    "parallel.cpp",
)
HEADERS = ("ember_kernels.h", "blocks.h", "fused.h", "paged_checks.h", "parallel.h")
# -fopenmp: at::parallel_for's OpenMP loop is inline in torch's headers (without it every call
# runs on one thread). The libgomp it links resolves to the copy torch already loaded.
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "f16c")


class KernelBuildError(Exception):
    """The kernels cannot be built or loaded here; the message is a one-line reason."""


def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty when unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def build_dir(flags: frozenset[str]) -> Path:
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(" ".join(sorted(flags)).encode())
    return envs.ember_home() / "kernels" / digest.hexdigest()[:16]


def load_library() -> Path:
    """Load the kernel library, compiling it first if needed; KernelBuildError if impossible."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise KernelBuildError(f"no native kernels for {platform.system()} {platform.machine()}")
    flags = cpu_flags()
    missing = [flag for flag in REQUIRED_CPU_FLAGS if flag not in flags]
    if missing:
        raise KernelBuildError(f"this CPU lacks {', '.join(missing)}")
    if not all((SOURCE_DIR / name).is_file() for name in (*SOURCES, *HEADERS)):
        raise KernelBuildError(f"kernel sources not found in {SOURCE_DIR}")
    directory = build_dir(flags)
    library = directory / f"{LIBRARY_NAME}.so"
    if library.is_file():
        torch.ops.load_library(str(library))
        return library
    return _compile(directory)


def _put_ninja_on_path() -> None:
    # cpp_extension runs `ninja` from PATH; the pip-installed one sits beside this Python,
    # which is not on PATH when ember runs from a venv that was never activated.
    try:
        import ninja

        ninja_dir = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        ninja_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if ninja_dir not in path.split(os.pathsep):
        os.environ["PATH"] = ninja_dir + os.pathsep + path if path else ninja_dir


def _compile(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # Said on stderr, not only logged: the first run otherwise pauses ~10 s without a word.
    print(
        "ember: compiling the CPU kernels (first run only, ~10 s)...", file=sys.stderr, flush=True
    )
    log.info("compiling Ember's CPU kernels into %s (first run only)", directory)
    started = time.monotonic()
    _put_ninja_on_path()
    try:
        from torch.utils import cpp_extension

        built = cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(SOURCE_DIR / name) for name in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # compiler missing, compile error, ninja missing, ...
        details = directory / "build-error.log"
        details.write_text(f"{type(error).__name__}: {error}\n", encoding="utf-8")
        raise KernelBuildError(f"compiling them failed (details in {details})") from error
    log.info("compiled Ember's CPU kernels in %.1f s", time.monotonic() - started)
    return Path(str(built))
