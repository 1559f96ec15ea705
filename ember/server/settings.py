"""What an `ember serve` process is configured with (no web framework imported here)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ember.sampling_params import MAX_LOGPROBS

PUBLIC_PATHS = frozenset({"/health", "/metrics"})
"""Paths that never need the API key: probes and scrapers run without one."""


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for; past them the request gets a 400 (413 for the body)."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body."""
    max_n: int = 16
    """Most completions per prompt (n)."""
    max_tokens: int | None = None
    """Most tokens one completion may ask for (None: the context length is the only limit)."""
    max_logprobs: int = MAX_LOGPROBS
    """Most top alternatives per position (top_logprobs, logprobs, prompt_logprobs)."""
    max_stop: int = 16
    """Most stop strings (and stop token ids)."""
    max_logit_bias: int = 1024
    """Most logit_bias entries."""
    max_prompts: int = 64
    """Most prompts in one completions request, or inputs in one embeddings request."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_n", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_logprobs", "max_stop", "max_logit_bias"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens limit must be positive, got {self.max_tokens}")
        if self.max_logprobs > MAX_LOGPROBS:
            raise ValueError(
                f"max_logprobs must be at most {MAX_LOGPROBS}, got {self.max_logprobs}"
            )


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP side behaves; the engine has its own EngineConfig."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    """Bearer token every non-public route requires (None: no auth)."""
    allowed_origins: tuple[str, ...] = ()
    """CORS origins ("*" for any); empty: CORS is off."""
    shutdown_timeout: float = 30.0
    """After SIGTERM, how long in-flight requests may run before they are aborted."""
    retry_after_seconds: int = 1
    """Retry-After sent with 429 (queue full) and 503 (shutting down)."""
    max_header_bytes: int = 16 * 1024
    """Largest request head (request line plus headers)."""
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown timeout must be >= 0, got {self.shutdown_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max header bytes must be at least 1024, got {self.max_header_bytes}")


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
