"""Errors that reach the user as one line.

Every user-facing failure (bad model file, bad request, failed pull) raises a subclass of
EmberError; the CLI prints ``error: <message>`` and exits non-zero, never a traceback.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base class: the message is a complete one-line reason meant for the user."""


class ModelFileError(EmberError):
    """A model file is missing, truncated, corrupt, or uses something Ember does not support."""


class RegistryError(EmberError):
    """A model could not be resolved, pulled, verified or removed."""


class TokenizerError(EmberError):
    """A tokenizer or chat template could not be built or rendered."""


class RequestError(EmberError):
    """A generation request is invalid (sampling values, prompt too long, ...)."""
