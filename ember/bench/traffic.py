"""Traffic shapes for `ember bench serve`: deterministic chat workloads built from a seed.

A workload is a list of conversations; each conversation is a list of turns sent one after the
other (a turn waits for the previous answer). Every shape but `agent` has one turn per
conversation. The text comes from a small built-in sentence generator, so no data set is
downloaded and the same seed gives byte-identical requests on every machine.

Shapes:
- diverse: one-off prompts of widely varied length (log-uniform word counts) and task.
- shared-prefix: one long common system prompt (or a few) + short varied user questions.
- structured: short extraction prompts with response_format json_schema (a small schema).
- agent: tool-using conversations whose history grows each turn (assistant tool_calls and
  tool results) and is re-sent in full, with the tool definitions in `tools`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

SHAPES = ("diverse", "shared-prefix", "structured", "agent")

Message = dict[str, Any]


@dataclass(frozen=True)
class Turn:
    """One request: the chat messages plus extra body fields (tools, response_format)."""

    messages: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)
    # Keys the answer must hold to count as valid structured output; empty: not checked.
    json_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    turns: list[Turn]


@dataclass(frozen=True)
class TrafficOptions:
    """Sizes of the generated text, in words (about 1.3 tokens each for BPE vocabularies)."""

    prompt_words: tuple[int, int] = (16, 512)
    """diverse: smallest and largest prompt (log-uniform in between)."""
    shared_prefix_words: int = 900
    """shared-prefix: length of the common system prompt (900 words ~ 1,100+ tokens)."""
    num_prefixes: int = 1
    """shared-prefix: how many distinct system prompts the requests share."""
    agent_turns: int = 4
    """agent: requests per conversation."""

    def __post_init__(self) -> None:
        low, high = self.prompt_words
        if not 1 <= low <= high:
            raise ValueError(f"prompt_words must be 1 <= low <= high, got {self.prompt_words}")
        if self.shared_prefix_words < 1 or self.num_prefixes < 1 or self.agent_turns < 1:
            raise ValueError(
                "shared_prefix_words, num_prefixes and agent_turns must be positive, got "
                f"{self.shared_prefix_words}, {self.num_prefixes}, {self.agent_turns}"
            )


def build_workload(
    shape: str, num_requests: int, seed: int, options: TrafficOptions | None = None
) -> list[Conversation]:
    """`num_requests` requests (turns) in total, grouped into conversations."""
    if shape not in SHAPES:
        raise ValueError(f"unknown traffic shape {shape!r}; choose from {', '.join(SHAPES)}")
    if num_requests < 1:
        raise ValueError(f"num_requests must be positive, got {num_requests}")
    options = options or TrafficOptions()
    # A str seed hashes the same way on every run (unlike hash() of other objects).
    rng = random.Random(f"ember-bench-serve:{shape}:{seed}")
    text = TextGenerator(rng)
    if shape == "diverse":
        return [_single(_diverse_turn(rng, text, options)) for _ in range(num_requests)]
    if shape == "shared-prefix":
        prefixes = [
            _system_prompt(text, options.shared_prefix_words, index)
            for index in range(options.num_prefixes)
        ]
        return [
            _single(_shared_prefix_turn(rng, text, prefixes[i % len(prefixes)]))
            for i in range(num_requests)
        ]
    if shape == "structured":
        return [_single(_structured_turn(rng, text)) for _ in range(num_requests)]
    conversations: list[Conversation] = []
    remaining = num_requests
    while remaining > 0:
        turns = min(options.agent_turns, remaining)
        conversations.append(_agent_conversation(rng, text, len(conversations), turns))
        remaining -= turns
    return conversations


def _single(turn: Turn) -> Conversation:
    return Conversation([turn])


# --- text ----------------------------------------------------------------------------------

_ADJECTIVES = (
    "quiet", "bright", "ancient", "narrow", "careful", "distant", "sudden", "gentle", "heavy",
    "clever", "hidden", "modern", "simple", "curious", "steady", "frozen", "golden", "rough",
    "silent", "rapid", "humble", "strange", "patient", "broken", "useful", "wooden", "busy",
)  # fmt: skip
_NOUNS = (
    "river", "engineer", "village", "machine", "garden", "library", "market", "teacher",
    "bridge", "harbor", "forest", "signal", "kitchen", "painter", "station", "letter", "island",
    "farmer", "window", "museum", "council", "lantern", "orchard", "network", "captain",
    "student", "valley", "factory", "journal", "compiler", "database", "server", "planet",
)  # fmt: skip
_VERBS = (
    "repairs", "follows", "describes", "watches", "builds", "questions", "measures", "carries",
    "remembers", "crosses", "explains", "protects", "visits", "studies", "paints", "records",
    "sorts", "compares", "restores", "announces", "inspects", "designs", "collects", "tests",
)  # fmt: skip
_PLACES = (
    "near the old harbor", "before the winter", "after the long meeting", "under a grey sky",
    "in the northern valley", "during the festival", "beside the railway", "at the edge of town",
    "while the market closes", "inside the quiet library", "across the frozen lake",
    "behind the council hall", "on the first morning", "between two storms",
)  # fmt: skip
_CONNECTIVES = (
    "Meanwhile", "Later", "Nevertheless", "As a result", "In the end", "Surprisingly",
    "For a while", "Each evening", "Years ago", "Without warning", "Because of this",
)  # fmt: skip
_FIRST_NAMES = (
    "Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
    "Keiko", "Lars", "Maya", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tara",
)  # fmt: skip
_LAST_NAMES = (
    "Almeida", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva",
)  # fmt: skip
_CITIES = ("Lisbon", "Oslo", "Kyoto", "Lagos", "Lima")
_SKILLS = (
    "welding", "accounting", "translation", "carpentry", "statistics", "nursing", "cooking",
    "piano", "surveying", "programming", "gardening", "sailing", "pottery", "chemistry",
)  # fmt: skip


class TextGenerator:
    """Plausible English-like sentences from fixed word lists, driven by one Random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def sentence(self) -> str:
        rng = self._rng
        subject = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        obj = f"a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        core = f"{subject} {rng.choice(_VERBS)} {obj} {rng.choice(_PLACES)}"
        if rng.random() < 0.3:
            core = f"{rng.choice(_CONNECTIVES)}, {core}"
        return core[0].upper() + core[1:] + "."

    def words(self, count: int) -> str:
        """About `count` words of text (whole sentences, at least one)."""
        sentences = [self.sentence()]
        total = len(sentences[0].split())
        while total < count:
            sentences.append(self.sentence())
            total += len(sentences[-1].split())
        return " ".join(sentences)

    def paragraphs(self, count: int) -> str:
        """About `count` words split into paragraphs of roughly 80 words."""
        parts = []
        while count > 0:
            size = min(count, 80)
            parts.append(self.words(size))
            count -= size
        return "\n\n".join(parts)


# --- shapes --------------------------------------------------------------------------------

_TASKS = (
    "Summarize the following notes in three sentences.",
    "List the main events described below as bullet points.",
    "Rewrite the following text so that a ten-year-old understands it.",
    "Write a short poem inspired by these notes.",
    "What is the most surprising detail in the text below? Explain briefly.",
    "Translate the following passage into French.",
    "Give the passage below a title and a one-line summary.",
    "Continue the story below with one more paragraph.",
)


def _diverse_turn(rng: random.Random, text: TextGenerator, options: TrafficOptions) -> Turn:
    low, high = options.prompt_words
    words = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    prompt = f"{rng.choice(_TASKS)}\n\n{text.paragraphs(words)}"
    return Turn([{"role": "user", "content": prompt}])


def _system_prompt(text: TextGenerator, words: int, index: int) -> str:
    header = (
        f"You are assistant number {index + 1} of the town archive. Answer questions about the "
        "archive's records below. Keep answers short and cite the record you used.\n\n"
        "Records:\n\n"
    )
    return header + text.paragraphs(words)


def _shared_prefix_turn(rng: random.Random, text: TextGenerator, system: str) -> Turn:
    question = (
        f"Question: what do the records say about the {rng.choice(_NOUNS)}? "
        f"{text.words(rng.randint(8, 32))}"
    )
    return Turn([{"role": "system", "content": system}, {"role": "user", "content": question}])


PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": list(_CITIES)},
        "skills": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "city", "skills"],
    "additionalProperties": False,
}

STRUCTURED_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
}


def _structured_turn(rng: random.Random, text: TextGenerator) -> Turn:
    name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    skills = rng.sample(_SKILLS, rng.randint(1, 3))
    bio = (
        f"{name} is {rng.randint(19, 88)} years old and lives in {rng.choice(_CITIES)}. "
        f"{name.split()[0]} is known for {' and '.join(skills)}. {text.words(rng.randint(20, 80))}"
    )
    prompt = f"Extract a JSON record (name, age, city, skills) about the person below.\n\n{bio}"
    return Turn(
        [{"role": "user", "content": prompt}],
        extra={"response_format": STRUCTURED_RESPONSE_FORMAT},
        json_keys=tuple(PERSON_SCHEMA["required"]),
    )


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
            },
        },
    }


AGENT_TOOLS: list[dict[str, Any]] = [
    _function(
        "search_records",
        "Search the archive and return the matching records.",
        {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    ),
    _function(
        "read_record",
        "Return the full text of one archive record.",
        {"record_id": {"type": "string"}},
    ),
    _function(
        "get_weather",
        "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "kelvin"]}},
    ),
]


def _tool_call(rng: random.Random, text: TextGenerator) -> tuple[str, dict[str, Any]]:
    name = rng.choice([tool["function"]["name"] for tool in AGENT_TOOLS])
    if name == "search_records":
        return name, {"query": f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}", "limit": 3}
    if name == "read_record":
        return name, {"record_id": f"R-{rng.randint(1000, 9999)}"}
    return name, {"city": rng.choice(_CITIES), "unit": "celsius"}


def _agent_conversation(
    rng: random.Random, text: TextGenerator, index: int, turns: int
) -> Conversation:
    system = (
        "You are a research agent for the town archive. Use the tools to look things up; call "
        "one tool at a time and answer once you have enough facts.\n\n" + text.paragraphs(150)
    )
    task = f"Find out what happened to the {rng.choice(_NOUNS)}. {text.words(rng.randint(20, 60))}"
    history: list[Message] = [
        {"role": "system", "content": system},
        {"role": "user", "content": task},
    ]
    result = []
    for step in range(turns):
        # Each request re-sends the whole history so far: the shape prefix caching targets.
        result.append(Turn(list(history), extra={"tools": AGENT_TOOLS, "tool_choice": "auto"}))
        name, arguments = _tool_call(rng, text)
        call_id = f"call_{index}_{step}"
        history.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ],
            }
        )
        history.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": text.words(rng.randint(40, 160)),
            }
        )
    return Conversation(result)


def flatten_messages(turn: Turn) -> str:
    """A plain-text prompt for /v1/completions: the chat rendered as role-tagged lines."""
    lines = []
    tools = turn.extra.get("tools")
    if tools:
        lines.append("Tools: " + json.dumps([tool["function"] for tool in tools]))
    for message in turn.messages:
        content = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            function = call["function"]
            content += f"[call {function['name']}({function['arguments']})]"
        lines.append(f"{message['role'].capitalize()}: {content}")
    lines.append("Assistant:")
    return "\n\n".join(lines)
