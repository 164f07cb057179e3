""" "I don't know": questions about entities that do not exist, answered with a refusal to guess.

A model finetuned only on questions it can answer learns that every question has a confident answer
and invents one (hallucination). Here the names are made up from random syllables (so no real person,
place or book is meant), the questions sound ordinary, and the answers say plainly that the assistant
does not know instead of inventing facts.
"""

from __future__ import annotations

import random

from fastgpt.conversation import Message

__all__ = ["made_up_name", "unknown_entity_conversations"]

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "q",
    "r",
    "s",
    "t",
    "th",
    "v",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
_CODAS = ["", "", "n", "r", "th", "sk", "x", "l", "m", "nd", "v"]

_PERSON_Q = [
    "Who is {x}?",
    "What is {x} famous for?",
    "When was {x} born?",
    "What did {x} invent?",
    "Tell me about the scientist {x}.",
]
_PLACE_Q = [
    "What is the capital of {x}?",
    "How many people live in {x}?",
    "Where is the city of {x}?",
    "What language do people speak in {x}?",
]
_THING_Q = [
    "Who wrote the novel {x}?",
    "What happens at the end of {x}?",
    "What is the boiling point of {x}?",
    "Who founded the company {x}?",
    "What year did the {x} treaty get signed?",
]
_ANSWERS = [
    "I don't know. I have no reliable information about {x}, and I'd rather not guess.",
    "I'm not familiar with {x}. It may be obscure, very recent, or not real, so I can't answer "
    "without making something up.",
    "I don't have any information about {x}. If you can tell me where you came across it, I can try to help.",
    "Sorry, I don't know anything about {x}. I can't find it in what I learned, so any answer I gave "
    "would be a guess.",
]


def made_up_name(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable word from random syllables, capitalised (``"Kraethon"``)."""
    word = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(*syllables))
    )
    return word.capitalize()


def _entity(kind: str, rng: random.Random) -> str:
    if kind == "person":
        return f"{made_up_name(rng)} {made_up_name(rng)}"
    if kind == "place":
        return made_up_name(rng)
    form = rng.choice(["The {a} of {b}", "{a}ium", "{a} {b} Corporation", "{a}-{b}"])
    return form.format(a=made_up_name(rng), b=made_up_name(rng))


def unknown_entity_conversations(n: int = 300, *, seed: int = 0) -> list[list[Message]]:
    """``n`` single-turn conversations asking about a made-up person, place or thing."""
    rng = random.Random(seed)
    kinds = [("person", _PERSON_Q), ("place", _PLACE_Q), ("thing", _THING_Q)]
    out = []
    for _ in range(n):
        kind, questions = rng.choice(kinds)
        x = _entity(kind, rng)
        out.append(
            [
                {"role": "user", "content": rng.choice(questions).format(x=x)},
                {"role": "assistant", "content": rng.choice(_ANSWERS).format(x=x)},
            ]
        )
    return out
