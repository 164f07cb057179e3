"""jagged_python: SFT conversations that answer the jagged tasks through the Python tool -- right answers
(by the tasks' own verifiers), tool outputs that are what the sandbox prints, and only training problems
(no question ``fastgpt eval`` or GRPO scores on)."""

import itertools
import re

import pytest

from fastgpt.conversation import SpecialTokenFormat, validate_messages
from fastgpt.errors import UserError
from fastgpt.sft_data import BUILTIN, load_mixture
from fastgpt.sft_data.jagged_python import jagged_python_conversation, jagged_python_conversations
from fastgpt.tasks.base import in_heldout
from fastgpt.tasks.jagged import INSTRUCTION, JAGGED_TASKS, JaggedTask
from fastgpt.tokenizer import Tokenizer
from fastgpt.tools import run_python


@pytest.fixture(scope="module")
def conversations():
    return jagged_python_conversations(600, seed=3)


def _question(conv) -> str:
    return conv[0]["content"].removesuffix(f"\n\n{INSTRUCTION}")


def test_every_task_is_answered_right_through_a_python_call(conversations):
    assert len(conversations) == 600
    by_question = {}
    for name in JAGGED_TASKS:
        task = JaggedTask(name)
        for p in itertools.islice(task.candidates(), 20_000):
            by_question[p.key.split(":", 1)[1]] = (task, p)
    kinds = set()
    for conv in conversations:
        validate_messages(conv)
        task, problem = by_question[_question(conv)]
        kinds.add(task.name)
        call = conv[1]["tool_calls"][0]["function"]
        assert call["name"] == "python" and call["arguments"]["code"] == f"print({problem.metadata['code']})"
        assert conv[2] == {"role": "tool", "content": f"{problem.answer}\n"}
        assert task.is_correct(conv[3]["content"], problem)
    assert kinds == set(JAGGED_TASKS)


def test_no_held_out_problem_is_used(conversations):
    held = set()
    for name in JAGGED_TASKS:
        task = JaggedTask(name)
        keys = {p.key for p in itertools.islice(task.candidates(), 20_000)}
        task_held = {k.split(":", 1)[1] for k in keys if in_heldout(k, task.heldout_fraction)}
        assert task_held  # the check below can fail
        held |= task_held
    assert not {_question(c) for c in conversations} & held
    # and the rule is the tasks' own: their held-out split is exactly what is excluded
    multiply = JaggedTask("jagged_multiply")
    assert all(p.question not in {_question(c) for c in conversations} for p in multiply.split("heldout", 50))


def test_tool_outputs_are_what_the_sandbox_prints(conversations):
    seen = {}
    for conv in conversations:
        seen.setdefault(conv[1]["content"], conv)  # one conversation per task (the lead names the task)
    assert len(seen) == len(JAGGED_TASKS)
    for conv in seen.values():
        code = conv[1]["tool_calls"][0]["function"]["arguments"]["code"]
        assert run_python(code).render() == conv[2]["content"]


def test_options_and_the_mixture():
    assert BUILTIN["jagged_python"] is jagged_python_conversations
    direct = jagged_python_conversations(60, tasks="jagged_compare,jagged_multiply", direct_fraction=1.0)
    assert all(len(c) == 2 and c[1]["content"].startswith("#### ") for c in direct)
    with pytest.raises(ValueError, match="jagged_python: tasks must be among"):
        jagged_python_conversations(10, tasks=["jagged_spelling"])
    train, val = load_mixture("jagged_python", log=lambda m: None)
    assert len(train) + len(val) == 1200
    # renders in fastgpt's chat format (the call as "python\nCODE" between the call tokens)
    tok = Tokenizer.train(["How many letters print count python " * 30], vocab_size=290)
    problem = JaggedTask("jagged_letter_count").split("train", 1)[0]
    ids, mask = SpecialTokenFormat(tok).render(jagged_python_conversation(problem))
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained.startswith("I'll count it with Python.<|tool_call_start|>python\nprint(")


def test_task_options_reach_the_generator_and_keep_the_heldout_split():
    """``task_options`` must shape the problems as GRPO's ``--task_options`` does, so the SFT data and
    the RL/eval held-out split describe the same task."""
    convs = jagged_python_conversations(
        60, tasks="jagged_multiply", task_options={"min_digits": 2, "max_digits": 2}
    )
    task = JaggedTask("jagged_multiply", min_digits=2, max_digits=2)
    heldout = {p.question for p in task.split("heldout", 50)}
    for conv in convs:
        a, b = re.search(r"What is (\d+) \* (\d+)\?", conv[0]["content"]).groups()
        assert len(a) == len(b) == 2
        assert conv[0]["content"] not in heldout
    with pytest.raises(UserError, match="task_options"):
        jagged_python_conversations(5, tasks="jagged_multiply", task_options={"max_digitz": 2})


def test_the_default_sft_mixture_teaches_python_for_jagged_questions():
    """Issue 15 item 4: the default mixture holds jagged_python (half of it: 600 conversations, each
    task's training problems only)."""
    from fastgpt.sft_data import DEFAULT_MIXTURE, parse_mixture

    item = next(i for i in parse_mixture(DEFAULT_MIXTURE) if i.source == "jagged_python")
    assert item.epochs == 0.5
    train, val = load_mixture([item], seed=0, log=lambda _: None)
    convs = train + val
    assert 550 <= len(convs) <= 650
    calls = [c for c in convs if any(m.get("tool_calls") for m in c)]
    assert len(calls) == len(convs)  # every one answers through Python (direct_fraction 0)
    users = {c[0]["content"] for c in convs}
    for name in JAGGED_TASKS:
        task = JaggedTask(name)
        held = task.split("heldout", None if task.finite else 50, up_to=True)
        assert not users & {p.question for p in held}, name
