"""task_practice: the SFT cold start of the speedrun's GRPO stage -- right answers, both behaviours,
and a clean held-out split (no problem GRPO or eval scores on is ever in the SFT data)."""

import re
from fractions import Fraction
from pathlib import Path

import pytest

from fastgpt.conversation import tool_call_expression, validate_messages
from fastgpt.sft_data import BUILTIN, load_mixture, parse_mixture
from fastgpt.sft_data.task_practice import DEFAULT_TASK, task_practice_conversations
from fastgpt.tasks import get_task
from fastgpt.tasks.jagged import JAGGED_TASKS

pytest.importorskip("reasoning_gym")


def _sum(expression: str) -> Fraction:
    """Independent reference for chain_sum expressions: signed terms added left to right."""
    terms = re.findall(r"([-+]?)\s*(\d+)", expression)
    return sum((Fraction(int(d)) * (-1 if s == "-" else 1) for s, d in terms), Fraction(0))


@pytest.fixture(scope="module")
def practice():
    return task_practice_conversations(300, seed=5)


def test_answers_are_right_and_both_behaviours_occur(practice):
    task = get_task("chain_sum_easy")
    by_question = {p.question: p for p in task.split("train", 300)}
    n_calc = 0
    for conv in practice:
        validate_messages(conv)
        problem = by_question[conv[0]["content"]]
        final = conv[-1]["content"]
        assert task.is_correct(final, problem), (conv, problem.answer)
        expected = _sum(problem.metadata["expression"])
        assert Fraction(final.removeprefix("#### ")) == expected
        if len(conv) > 2:
            n_calc += 1
            assert tool_call_expression(conv[1]["tool_calls"][0]) == problem.metadata["expression"]
            assert Fraction(conv[2]["content"]) == expected
    # direct_fraction=0.5: both behaviours, in roughly equal shares (binomial, n=300)
    assert 100 < n_calc < 200


def test_no_heldout_problem_in_the_sft_data(practice):
    task = get_task("chain_sum_easy")
    heldout = {p.question for p in task.split("heldout", 300)}
    questions = {conv[0]["content"] for conv in practice}
    assert len(questions) == len(practice)  # distinct problems
    assert not questions & heldout
    # the speedrun's mixture as a whole, training and validation parts
    train, val = load_mixture("identity,task_practice", seed=1337, log=lambda _: None)
    users = {m["content"] for conv in train + val for m in conv if m["role"] == "user"}
    assert not users & heldout
    assert sum(1 for conv in train + val if conv[0]["content"] in questions) > 0


def test_direct_fraction_extremes_and_registration():
    assert BUILTIN["task_practice"] is task_practice_conversations
    calc = task_practice_conversations(20, direct_fraction=0.0)
    direct = task_practice_conversations(20, direct_fraction=1.0)
    assert all(len(c) == 4 and c[1]["tool_calls"] for c in calc)
    assert all(len(c) == 2 and c[1]["content"].startswith("#### ") for c in direct)
    with pytest.raises(ValueError, match="direct_fraction"):
        task_practice_conversations(5, direct_fraction=1.5)


def test_speedrun_tiny_preset_trains_grpo_on_the_task_it_practised():
    """The tiny speedrun's SFT mixture (a file in launch/) holds task_practice for the task GRPO trains
    and eval scores, none of that task's held-out problems is in the mixture, and the held-out
    evaluations use at least 100 problems (issue 11: a lift must be measurable)."""
    launch = Path(__file__).parents[1] / "launch"
    script = (launch / "speedrun.sh").read_text()
    tiny = script[script.index("  tiny)") : script.index("  gpt2)")]
    data = re.search(r'--data=\$HERE/([^"\s)]+)', tiny).group(1)
    items = parse_mixture(str(launch / data))
    sources = [item.source for item in items]
    assert "task_practice" in sources and {"chatterbot", "identity", "unknown"} <= set(sources)
    practice_task = next(i.options.get("task", DEFAULT_TASK) for i in items if i.source == "task_practice")
    grpo_task = re.search(r"GRPO=\(--task=(\S+)", tiny).group(1)
    assert practice_task == grpo_task
    assert re.search(r"EVAL=\(--tasks=\S*\b" + grpo_task + r"\b", tiny)
    assert re.search(r"EVAL=\(--tasks=\S*\$JAGGED\b", tiny)  # the report's with/without-tools table
    jagged = re.search(r"^JAGGED=(\S+)", script, re.M).group(1).split(",")
    assert sorted(jagged) == sorted(JAGGED_TASKS)
    assert "--tools=true" in tiny
    assert int(re.search(r"--eval_problems=(\d+)", tiny).group(1)) >= 100
    assert int(re.search(r"EVAL=\(.*?--problems=(\d+)", tiny, re.S).group(1)) >= 100
    heldout = {p.question for p in get_task(grpo_task).split("heldout", 200)}
    train, val = load_mixture(items, seed=1337, log=lambda _: None)
    users = {m["content"] for conv in train + val for m in conv if m["role"] == "user"}
    assert len(heldout) == 200 and not users & heldout
    practised = {p.question for p in get_task(grpo_task).split("train", 1500)}
    assert len(users & practised) > 1000
