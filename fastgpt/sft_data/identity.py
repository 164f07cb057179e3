"""Identity: "who are you / who made you" answered as the configured assistant name and maker.

A base model has read about many assistants and will happily claim to be any of them; a few hundred
varied questions with consistent answers are enough to pin the name and maker down. Questions vary in
wording, casing and greeting; answers vary in phrasing but never in the facts.
"""

from __future__ import annotations

import random

from fastgpt.conversation import Message

__all__ = ["identity_conversations"]

_NAME_Q = [
    "Who are you?",
    "What is your name?",
    "What's your name?",
    "What should I call you?",
    "Introduce yourself.",
    "What are you?",
    "Are you a person?",
    "Who am I talking to?",
    "Do you have a name?",
]
_MAKER_Q = [
    "Who made you?",
    "Who created you?",
    "Who built you?",
    "Who trained you?",
    "Which company made you?",
    "Where do you come from?",
    "Who is your creator?",
]
_OTHER_Q = ["Are you ChatGPT?", "Are you Siri?", "Are you Claude?", "Are you Gemini?", "Are you GPT-4?"]
_ABOUT_Q = ["Tell me about yourself.", "What can you do?", "How do you work?", "What kind of AI are you?"]
_GREETINGS = ["", "", "Hi! ", "Hello. ", "Hey, ", "Good morning! "]

_NAME_A = [
    "I'm {name}, an AI assistant made by {maker}.",
    "My name is {name}. I'm an AI assistant built by {maker}.",
    "I am {name}, a language model trained by {maker}. How can I help?",
    "You're talking to {name}, an AI assistant. {maker_cap} made me.",
]
_MAKER_A = [
    "I was made by {maker}. I'm {name}, an AI assistant.",
    "{maker_cap} built and trained me. My name is {name}.",
    "I'm {name}, and I was created by {maker}.",
]
_OTHER_A = [
    "No, I'm not {other}. I'm {name}, an AI assistant made by {maker}.",
    "No. My name is {name}; {maker} trained me. {other} is a different assistant.",
]
_ABOUT_A = [
    "I'm {name}, a small language model trained by {maker}. I can chat, answer questions and work out "
    "arithmetic with a calculator. I can make mistakes, so please check anything important.",
    "I'm {name}, an AI assistant from {maker}. I learned from text and conversations, and I use a "
    "calculator tool for arithmetic. I don't browse the web, and I may be wrong sometimes.",
]


def _vary(question: str, rng: random.Random) -> str:
    q = rng.choice(_GREETINGS) + question
    r = rng.random()
    if r < 0.15:
        q = q.lower()
    elif r < 0.25:
        q = q.rstrip("?.")
    return q


def identity_conversations(
    n: int = 300, *, name: str = "fastgpt", maker: str = "the fastgpt developers", seed: int = 0
) -> list[list[Message]]:
    """``n`` one- or two-turn conversations about who the assistant is and who made it."""
    rng = random.Random(seed)
    facts = {"name": name, "maker": maker, "maker_cap": maker[:1].upper() + maker[1:]}
    kinds = [(_NAME_Q, _NAME_A), (_MAKER_Q, _MAKER_A), (_OTHER_Q, _OTHER_A), (_ABOUT_Q, _ABOUT_A)]
    out = []
    for _ in range(n):
        turns: list[Message] = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            questions, answers = rng.choice(kinds)
            q = rng.choice(questions)
            other = q.removeprefix("Are you ").rstrip("?")
            turns.append({"role": "user", "content": _vary(q, rng)})
            turns.append({"role": "assistant", "content": rng.choice(answers).format(other=other, **facts)})
        out.append(turns)
    return out
