"""The package-index settings pip would use here, so `ember pull` reaches the same mirrors.

pip's own `config list` is asked rather than re-implementing its search over config files and
PIP_* variables; its answer merges them with pip's precedence already applied per file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass

PYPI_SIMPLE = "https://pypi.org/simple"

# Within pip's merged view an environment variable beats a `download` section, which beats `global`.
_SECTIONS = (":env:", "download", "global")


@dataclass(frozen=True)
class PipSettings:
    index_urls: tuple[str, ...]  # the main index first, then extra indexes
    find_links: tuple[str, ...]  # folders (or URLs) of loose wheels
    cert: str | None  # CA bundle for HTTPS


def parse_config_list(text: str) -> dict[str, str]:
    """`section.key='value'` lines from `pip config list` -> {"section.key": value}."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        values[key.strip()] = str(value)
    return values


def settings_from_config(values: dict[str, str]) -> PipSettings:
    def option(name: str) -> str | None:
        for section in _SECTIONS:
            if (value := values.get(f"{section}.{name}")) is not None:
                return value
        return None

    no_index = (option("no-index") or "").lower() in ("1", "true", "yes", "on")
    index_urls: list[str] = []
    if not no_index:
        index_urls.append(option("index-url") or PYPI_SIMPLE)
        index_urls.extend((option("extra-index-url") or "").split())
    return PipSettings(
        index_urls=tuple(index_urls),
        find_links=tuple((option("find-links") or "").split()),
        cert=option("cert"),
    )


def read_pip_settings() -> PipSettings:
    """pip's settings for this interpreter; plain PyPI when pip is missing or fails."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return settings_from_config({})
    return settings_from_config(parse_config_list(done.stdout) if done.returncode == 0 else {})
