"""Tasks for RL: answer extraction, numeric checks, the held-out split, built-in tasks, rewards."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from fastgpt.tasks import (
    RewardConfig,
    SafeReward,
    TaskError,
    TaskReward,
    extract_answer,
    format_ok,
    get_task,
    numbers_equal,
    overlong_penalty,
    parse_number,
)
from fastgpt.tasks.game24 import Game24Task, evaluate_24, solve_24


# ------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        ("12 + 30 = 42\n#### 42", "42"),
        ("#### 1\nno wait\n#### 2 ", "2"),  # the last marker wins
        ("<answer>7</answer>\n#### 8", "7"),  # a tagged answer beats the hash marker
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),  # nested braces
        ("The answer is 1,234.", "1,234"),
        ("Answer: -5", "-5"),
        ("first 3 apples, then 5 pears", "5"),  # last number
        ("3.5 and then .25", ".25"),
        ("temperature fell to \u22124", "\u22124"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", Fraction(42)),
        ("-3.50", Fraction(-7, 2)),
        ("$1,234.50", Fraction(246900, 200)),
        ("3/4", Fraction(3, 4)),
        ("50%", Fraction(1, 2)),
        ("\u22124", Fraction(-4)),
        ("288.", Fraction(288)),
        ("1e3", 1000.0),
        ("5 apples", None),
        ("12,34", None),  # not a thousands grouping
        ("1/0", None),
        (None, None),
    ],
)
def test_parse_number(text, expected):
    value = parse_number(text)
    assert value == expected and type(value) is type(expected)


def test_numbers_equal_exact_and_float():
    assert numbers_equal(parse_number("288.0"), parse_number("288"))
    assert not numbers_equal(parse_number("288.01"), parse_number("288"))
    assert numbers_equal(parse_number("1e3"), parse_number("1000"))
    assert not numbers_equal(None, Fraction(1))


# ------------------------------------------------------------------------------------------ jsonl task
def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_jsonl_task_split_is_disjoint_stable_and_near_fraction(tmp_path):
    path = _write_jsonl(
        tmp_path / "sums.jsonl", [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(2000)]
    )
    task = get_task(str(path), heldout_fraction=0.2)
    train, heldout = task.split("train"), task.split("heldout")
    assert len(train) + len(heldout) == 2000
    assert {p.key for p in train}.isdisjoint(p.key for p in heldout)
    assert 0.17 < len(heldout) / 2000 < 0.23  # binomial sd is ~0.009
    again = get_task(str(path), heldout_fraction=0.2).split("heldout")
    assert [p.key for p in again] == [p.key for p in heldout]
    # training stream: only train problems, reshuffled each pass
    stream = task.train_stream(seed=1)
    first_pass = [next(stream).key for _ in range(len(train))]
    assert sorted(first_pass) == sorted(p.key for p in train) and first_pass != [p.key for p in train]


def test_jsonl_task_checks_numeric_and_exact(tmp_path):
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "17 * 3?", "answer": 51},
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                ],
                "answer": "Paris",
                "id": "q2",
            },
        ],
    )
    task = get_task(str(path), heldout_fraction=0.0)
    numeric, text = task.split("train")
    assert numeric.messages[-1]["content"].startswith("17 * 3?") and "####" in numeric.messages[-1]["content"]
    assert text.messages[0] == {"role": "system", "content": "Be brief."} and text.key == "q2"
    assert task.is_correct("17*3 = 51.0\n#### 51.0", numeric)
    assert not task.is_correct("#### 52", numeric)
    assert task.is_correct("#### paris.", text)
    assert not task.is_correct("#### Lyon", text)
    assert task.accuracy(["#### 51", "#### Lyon"], [numeric, text]) == 0.5


def test_jsonl_task_bad_input_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "answer": 1}\n{"prompt": "no answer here"}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.jsonl:2: missing field 'answer'"):
        get_task(str(path))
    path.write_text('{"answer": 1}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.jsonl:1: missing field 'prompt'"):
        get_task(str(path))
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.jsonl:1: not valid JSON"):
        get_task(str(path))
    path.write_text('["prompt", "answer"]\n', encoding="utf-8")
    expected = r"bad\.jsonl:1: expected a JSON object with 'prompt' and 'answer', got list$"
    with pytest.raises(TaskError, match=expected):
        get_task(str(path))
    with pytest.raises(TaskError, match="unknown task"):
        get_task("no_such_task")


# ------------------------------------------------------------------------------------------ game of 24
@pytest.mark.parametrize(
    "expression, numbers, ok",
    [
        ("8 / (3 - 8 / 3)", (3, 3, 8, 8), True),  # needs exact rational arithmetic
        ("(4 + 8) * 2 * 1", (1, 2, 4, 8), True),
        ("(4 + 8) * 2 * 1 = 24", (1, 2, 4, 8), True),
        ("4 \u00d7 6 \u00d7 1 \u00d7 1", (1, 1, 4, 6), True),
        ("(4 + 8) * 2", (1, 2, 4, 8), False),  # a number unused
        ("(4 + 8) * 2 * 1 * 1", (1, 2, 4, 8), False),  # a number used twice
        ("(4 + 8) * 2 * 1 = 25", (1, 2, 4, 8), False),
        ("2 ** 4 + 8 * 1", (1, 2, 4, 8), False),  # exponentiation is not allowed
        ("24.0 * 1 * 1 * 1", (24, 1, 1, 1), False),  # float literal
        ("6 / (1 - 1) + 4 * 4", (1, 1, 4, 6), False),  # division by zero
        ("import os", (1, 1, 4, 6), False),
    ],
)
def test_evaluate_24(expression, numbers, ok):
    assert evaluate_24(expression, numbers) is ok


def test_solve_24_finds_valid_solutions_and_reports_impossible():
    for numbers in [(1, 1, 4, 6), (3, 3, 8, 8), (4, 4, 10, 10), (1, 5, 5, 5)]:
        expression = solve_24(numbers)
        assert expression is not None and evaluate_24(expression, numbers), numbers
    assert solve_24((1, 1, 1, 1)) is None  # max reachable is 4


def test_game24_task_on_given_puzzles():
    task = Game24Task(puzzles=[(1, 1, 4, 6), (3, 3, 8, 8)], heldout_fraction=0.0)
    p1, p2 = task.split("train")
    assert "1 1 4 6" in p1.question
    assert task.is_correct("Multiply 4 and 6.\n#### (1 * 1) * 4 * 6", p1)
    assert task.is_correct("Try this:\n8 / (3 - 8 / 3)", p2)  # unmarked: last arithmetic line
    assert not task.is_correct("#### 24", p1)
    assert not task.is_correct("#### 4 * 6", p1)


@pytest.mark.slow
def test_game24_real_puzzles_all_solvable():
    task = get_task("game24")
    puzzles = [p.metadata["numbers"] for p in task.candidates()]
    assert len(puzzles) == 1362
    for numbers in puzzles[:100]:
        assert evaluate_24(solve_24(numbers), numbers)


# ------------------------------------------------------------------------------------------ reasoning-gym
def test_reasoning_gym_solutions_verify_and_agree_with_its_scorer():
    import reasoning_gym

    task = get_task("gsm_symbolic", seed=3)
    problems = task.split("heldout", 20)
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0)
    for p in problems:
        assert p.solution.rstrip().endswith(f"#### {p.answer}")
        assert task.is_correct(p.solution, p)
        # reasoning-gym's own scorer accepts the answer our extraction finds
        assert dataset.score_answer(task.extract(p.solution), {"answer": p.answer, "metadata": {}}) == 1.0
        wrong = p.solution.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}"
        assert not task.is_correct(wrong, p)
    easy = get_task("chain_sum_easy")
    heldout_keys = {p.key for p in easy.split("heldout", 50)}
    stream = easy.train_stream()
    assert heldout_keys.isdisjoint(next(stream).key for _ in range(500))


def test_chain_sum_small_asks_the_bare_fixed_length_question():
    """The tiny speedrun's RL task: three one-digit terms, the expression ends the user turn (no
    instruction after it), its answers check out, and the held-out split has >= 100 problems."""
    import re

    task = get_task("chain_sum_small")
    heldout = task.split("heldout", 100)
    assert len(heldout) == 100
    for p in heldout + task.split("train", 100):
        content = p.messages[-1]["content"]
        expression = p.metadata["expression"]
        assert re.fullmatch(r"\d [+-] \d [+-] \d", expression), expression
        assert content.rstrip().endswith(f"{expression} =")
        assert "####" not in content
        signs = [1] + [1 if op == "+" else -1 for op in expression.split()[1::2]]
        assert sum(s * int(d) for s, d in zip(signs, expression.split()[::2])) == int(p.answer)
        assert task.is_correct(f"#### {p.answer}", p) and not task.is_correct(f"#### {int(p.answer) + 1}", p)
    # an explicit instruction still wins over the task's default
    assert (
        get_task("chain_sum_small", instruction="Be brief.")
        .split("train", 1)[0]
        .messages[-1]["content"]
        .endswith("\n\nBe brief.")
    )
    assert (
        get_task("chain_sum_easy").split("train", 1)[0].messages[-1]["content"].endswith("'#### <number>'.")
    )


# ------------------------------------------------------------------------------------------ rewards
def test_overlong_penalty_hand_values():
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == -0.5
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(150, 100, 20) == -1.0


def test_format_ok_styles():
    assert format_ok("2 + 3 = 5\n#### 5", "hash")
    assert not format_ok("#### 5", "hash")  # no reasoning before the answer
    assert not format_ok("2 + 3 = 5\n#### 5\nand more text", "hash")
    assert format_ok("<think>2+3</think>\n<answer>5</answer>", "tags")
    assert not format_ok("<answer>5</answer>", "tags")


def test_task_reward_combines_parts(tmp_path):
    task = get_task(
        str(_write_jsonl(tmp_path / "one.jsonl", [{"prompt": "2 + 3 =", "answer": 5}])), heldout_fraction=0
    )
    (problem,) = task.split("train")
    config = RewardConfig(format_weight=0.5, length_weight=1.0, max_tokens=100, overlong_buffer=20)
    reward = TaskReward(task, config)
    r = reward("2 + 3 = 5\n#### 5", problem, num_tokens=90)
    assert (r.correct, r.format, r.length) == (1.0, 1.0, -0.5) and r.total == pytest.approx(1.0)
    r = reward("#### 6", problem, num_tokens=10)
    assert (r.correct, r.format, r.length, r.total) == (0.0, 0.0, 0.0, 0.0)


def test_raising_reward_scores_zero_and_logs_once_per_kind():
    logged = []
    calls = iter([ValueError("bad"), ValueError("worse"), KeyError("k"), 1.0, float("nan")])

    def flaky(completion, problem):
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    safe = SafeReward(flaky, log=logged.append)
    scores = [safe("x", None) for _ in range(5)]
    assert scores == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert safe.errors == {"ValueError": 2, "KeyError": 1, "NaN": 1}
    assert len(logged) == 3 and "ValueError" in logged[0] and "KeyError" in logged[1]


def test_exhausted_generator_is_an_error_not_a_hang():
    # 2 one-digit terms: 200 distinct problems, about 20 of them held out
    task = get_task("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    heldout = task.split("heldout", 10)
    assert len({p.key for p in heldout}) == 10
    with pytest.raises(TaskError, match="distinct heldout problems"):
        task.split("heldout", 50)
