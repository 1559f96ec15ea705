"""Fast CPU kernels for GGUF block types: a small C++ extension (csrc/) behind one switch.

- fast_methods_available(): False when EMBER_NO_KERNELS=1 asks for the reference path (read at
  every call, so tests can flip it); otherwise builds (first run only) and loads the native
  library once, and is False, after ONE warning line, when that is impossible here.
- fast_method(name): the fast QuantMethod for a GGML type, or None.
- accelerated(method): the hook ember.quant.base.get_quant_method applies to what it returns.

Fast methods override `matmul` / `embedding` and keep the reference `dequantize`; their
matmul quantizes activations to int8 for small batches, so it matches the reference to about
1% relative error, not bit for bit (embedding rows are exact).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from ember import envs
from ember.kernels._build import KernelBuildError, load_library
from ember.kernels.methods import GGML_TYPE_IDS, fast_twin
from ember.quant.base import QuantMethod

log = logging.getLogger("ember.kernels")

__all__ = ["accelerated", "fast_method", "fast_methods_available"]


def try_load(loader: Callable[[], object] = load_library) -> bool:
    """Load the library with `loader`; on failure log one warning line and return False."""
    try:
        loader()
    except KernelBuildError as error:
        log.warning(
            "Ember's fast CPU kernels are unavailable (%s); using the slower reference path", error
        )
        return False
    except Exception as error:  # a broken .so, a torch ABI mismatch: still never crash
        log.warning(
            "Ember's fast CPU kernels failed to load (%s: %s); using the slower reference path",
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return False
    return True


@functools.cache
def _library_loaded() -> bool:
    return try_load()


def fast_methods_available() -> bool:
    return not envs.no_kernels() and _library_loaded()


@functools.cache
def _twins() -> dict[str, QuantMethod]:
    from ember.quant import k_quants, legacy

    methods = [*legacy.METHODS, *k_quants.METHODS]
    return {m.name: fast_twin(m) for m in methods if m.name in GGML_TYPE_IDS}


def fast_method(name: str) -> QuantMethod | None:
    """The native-kernel method for GGML type `name`, or None (no kernel, or unavailable)."""
    if name not in GGML_TYPE_IDS or not fast_methods_available():
        return None
    return _twins()[name]


def accelerated(method: QuantMethod) -> QuantMethod:
    """`method`'s fast twin when there is one and the kernels are available, else `method`."""
    return fast_method(method.name) or method
