"""Quant methods: how each GGML tensor type stores weights, and how to compute with them."""

from __future__ import annotations

from ember.quant.base import SUPPORTED_TYPES, QuantMethod, get_quant_method

__all__ = ["SUPPORTED_TYPES", "QuantMethod", "get_quant_method"]
