"""The jagged-intelligence tasks: exact verifiers, determinism, a held-out split disjoint from train."""

import itertools
import random
from fractions import Fraction

import pytest

from fastgpt.tasks import BUILTIN_TASKS, TaskError, get_task, in_heldout
from fastgpt.tasks.jagged import JAGGED_TASKS, JaggedTask, parse_count, parse_letter, parse_word

_rng = random.Random(0)
# words this test makes itself: a few real ones plus random letter strings, enough for distinct problems
TINY_WORDS = ["strawberry", "banana", "mississippi", "cat", "bookkeeper", "level", "queue"] + [
    "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 12))) for _ in range(300)
]


def task(name, **kw):
    return get_task(name, words=TINY_WORDS, **kw) if name != "jagged_compare" else get_task(name, **kw)


def test_every_jagged_task_is_a_builtin():
    assert set(JAGGED_TASKS) <= set(BUILTIN_TASKS)
    for name in JAGGED_TASKS:
        assert isinstance(get_task(name), JaggedTask)
    with pytest.raises(TaskError, match="jagged_nope"):
        get_task("jagged_nope")
    with pytest.raises(TaskError, match="alphabetic"):
        JaggedTask("jagged_reverse", words=["ok", "not ok"])


def _expected(name, m):
    if name == "jagged_letter_count":
        return str(sum(c == m["letter"] for c in m["word"]))
    if name == "jagged_reverse":
        return "".join(reversed(m["word"]))
    if name == "jagged_char_at":
        return m["word"][m["position"] - 1]
    if name == "jagged_word_length":
        return str(len(m["word"]))
    if name == "jagged_compare":
        return max(m["a"], m["b"], key=Fraction)
    return str(m["x"] * m["y"])


@pytest.mark.parametrize("name", JAGGED_TASKS)
def test_reference_answers_are_right_by_independent_computation(name):
    for p in task(name).split("train", 40):
        expected = _expected(name, p.metadata)
        assert p.answer == expected, p
        assert p.metadata["word"] in p.question if "word" in p.metadata else True
        t = task(name)
        assert t.is_correct(p.solution, p)  # the worked solution ends in the answer
        assert t.is_correct(f"#### {p.answer}", p)


@pytest.mark.parametrize("name", JAGGED_TASKS)
def test_same_seed_same_stream_other_seed_other_stream(name):
    a = [p.question for p in task(name, seed=1).split("train", 15)]
    b = [p.question for p in task(name, seed=1).split("train", 15)]
    c = [p.question for p in task(name, seed=2).split("train", 15)]
    assert a == b and a != c


@pytest.mark.parametrize("name", JAGGED_TASKS)
def test_heldout_is_disjoint_from_train(name):
    t = task(name, heldout_fraction=0.3)
    train, held = t.split("train", 20), t.split("heldout", 5)
    assert {p.key for p in train}.isdisjoint({p.key for p in held})
    assert all(in_heldout(p.key, 0.3) for p in held) and not any(in_heldout(p.key, 0.3) for p in train)


def _problem(name, **match):
    for p in itertools.islice(task(name).candidates(), 100_000):
        if all(p.metadata.get(k) == v for k, v in match.items()):
            return p
    raise AssertionError(f"no {name} problem with {match}")


def test_letter_count_verifier():
    t, p = task("jagged_letter_count"), _problem("jagged_letter_count", word="strawberry", letter="r")
    assert p.answer == "3"
    for good in [
        "#### 3",
        "There are 3 r's.\n#### 3",
        "The answer is three.",
        "Answer: **3**",
        "3",
        "#### 3 r's",
    ]:
        assert t.is_correct(good, p), good
    for bad in ["#### 2", "The answer is two.", "#### 3.5", "", "#### r", "There are 3 r's... no, 2."]:
        assert not t.is_correct(bad, p), bad


def test_reverse_verifier():
    t, p = task("jagged_reverse"), _problem("jagged_reverse", word="strawberry")
    for good in [
        "#### yrrebwarts",
        "#### YRREBWARTS",
        '#### "yrrebwarts".',
        "#### y-r-r-e-b-w-a-r-t-s",
        "yrrebwarts",
    ]:
        assert t.is_correct(good, p), good
    for bad in ["#### yrrebwart", "#### strawberry", "#### yrebwarts", "", "#### y r r"]:
        assert not t.is_correct(bad, p), bad


def test_char_at_verifier():
    t = task("jagged_char_at")
    p = _problem("jagged_char_at", word="strawberry", position=3)
    assert p.answer == "r" and "3rd" in p.question
    for good in ["#### r", "#### R", "#### 'r'", "The answer is the letter r.", "It is r"]:
        assert t.is_correct(good, p), good
    for bad in ["#### a", "#### ra", "", "#### 3"]:
        assert not t.is_correct(bad, p), bad


def test_word_length_verifier():
    t, p = task("jagged_word_length"), _problem("jagged_word_length", word="mississippi")
    assert p.answer == "11"
    assert t.is_correct("#### 11", p) and t.is_correct("It has 11 letters.", p)
    assert t.is_correct("The answer is eleven.", p)
    assert not t.is_correct("#### 10", p)


def test_compare_verifier():
    t = task("jagged_compare")
    p = next(p for p in t.split("train", 200) if len(p.metadata["a"]) != len(p.metadata["b"]))
    larger, smaller = p.answer, ({p.metadata["a"], p.metadata["b"]} - {p.answer}).pop()
    assert Fraction(larger) > Fraction(smaller)
    assert t.is_correct(f"#### {larger}", p) and t.is_correct(
        f"{larger} is larger than {smaller}... #### {larger}", p
    )
    assert t.is_correct(f"#### {larger}0", p)  # 9.90 is 9.9
    assert not t.is_correct(f"#### {smaller}", p)
    assert not t.is_correct(f"The larger is {larger}, not {smaller}", p)  # unmarked: the last number


def test_multiply_verifier():
    t = task("jagged_multiply", min_digits=3, max_digits=3)
    for p in t.split("train", 20):
        x, y = p.metadata["x"], p.metadata["y"]
        assert 100 <= x <= 999 and 100 <= y <= 999
        assert t.is_correct(f"#### {x * y:,}", p)  # thousands separators are fine
        assert t.is_correct(f"{x} * {y} = {x * y}", p)
        assert not t.is_correct(f"#### {x * y + 1}", p)
        assert not t.is_correct(f"#### {x * y + 10}", p)


@pytest.mark.parametrize(
    "fn, text, value",
    [
        (parse_count, "3", 3),
        (parse_count, "**3**.", 3),
        (parse_count, "three", 3),
        (parse_count, "3 r's", 3),
        (parse_count, "3.0", 3),
        (parse_count, "3.5", None),
        (parse_count, "r", None),
        (parse_letter, "'R'.", "r"),
        (parse_letter, "the letter b", "b"),
        (parse_letter, "rb", None),
        (parse_word, "Y, R, R", "yrr"),
        (parse_word, "`abc`", "abc"),
        (parse_word, "", None),
    ],
)
def test_parsers(fn, text, value):
    assert fn(text) == value
