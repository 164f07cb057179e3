"""Reward model: preference data loading (bad input counted), the scalar head (score position, save/load),
and a tiny model that learns separable synthetic pairs well above chance."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fastgpt.chat.template import format_for
from fastgpt.rl.heads import ScalarHeadModel
from fastgpt.rl.pairs import PairOrder, collate_pairs, render_pairs
from fastgpt.rl.toy import tiny_model_dir
from fastgpt.tasks import TaskError
from fastgpt.tasks.preferences import PairStats, corrupt_solution, load_pairs, pairs_from_records, split_pairs


def test_pair_records_all_forms_and_skips(tmp_path):
    records = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": {"role": "assistant", "content": "4"},
            "rejected": "5",
        },
        {
            "conversations": [{"from": "human", "value": "Name a colour."}],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": "Seven."},
        },
        {
            "chosen": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Hi"}],
            "rejected": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "..."}],
        },
        {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes. "},  # identical after trimming
        {"prompt": "No rejected", "chosen": "x"},
        {
            "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "1"}],
            "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "2"}],
        },
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    logged = []
    pairs = load_pairs(str(path), log=logged.append)
    assert [p.chosen for p in pairs] == ["Hello!", "4", "Blue.", "Hi"]
    assert pairs[3].prompt == ({"role": "user", "content": "Hey"},)
    assert "kept 4 of 8 pairs; skipped 1 with identical chosen/rejected, 3 malformed" in logged[0]
    stats = PairStats()
    pairs_from_records(iter([("here", records[5])]), stats=stats)
    assert stats.malformed == 1 and "missing field 'rejected'" in stats.reasons[0]
    with pytest.raises(TaskError, match=r"pairs\.jsonl:6: missing field 'rejected'"):
        load_pairs(str(path), strict=True)
    with pytest.raises(TaskError, match="unknown preference data"):
        load_pairs("nope")


def test_trl_explicit_prompt_pairs_and_reasons_of_every_kind(tmp_path, capsys):
    """TRL's conversational form with an explicit prompt ("chosen": [one assistant message]) is read; a
    run of identical pairs does not hide the reason a later record was malformed; --strict reaches the
    pair reader from the command line."""
    p = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Add 2 and 3"}]
    trl = {
        "prompt": p,
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    }
    same = {"prompt": "Same?", "chosen": "Yes", "rejected": "Yes"}
    two = {"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"}
    user = {"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [trl, *[same] * 5, two, user]) + "\n")
    logged = []
    pairs = load_pairs(str(path), log=logged.append)
    assert (
        len(pairs) == 1 and pairs[0].prompt == tuple(p) and (pairs[0].chosen, pairs[0].rejected) == ("5", "6")
    )
    assert "skipped 5 with identical chosen/rejected, 2 malformed" in logged[0]
    assert (
        "pairs.jsonl:7: field 'chosen' must be a string, a message or a list of one assistant message, got list of 2"
        in logged[0]
    )
    assert "pairs.jsonl:8: field 'chosen': the reply must be an assistant message" in logged[0]

    from fastgpt.dpo import main

    model_dir = tiny_model_dir(tmp_path / "m")
    args = [
        f"--model={model_dir}",
        f"--data={path}",
        f"--out_dir={tmp_path / 'dpo'}",
        "--max_steps=1",
        "--strict=true",
    ]
    capsys.readouterr()
    assert main(args) == 2  # one error line naming the first malformed record, no training
    assert capsys.readouterr().err.startswith(f"fastgpt dpo: error: {path}:7: field 'chosen' must be")


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_no_held_out_pairs_logs_no_held_out_metrics(tmp_path, capsys, stage):
    """Without held-out pairs the heldout_* metrics were logged as zeros (accuracy 0 over 0 pairs)."""
    import importlib

    main = importlib.import_module(f"fastgpt.{stage}").main
    data = _separable_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / stage
    args = [
        f"--model={tiny_model_dir(tmp_path / 'm')}",
        f"--data={data}",
        f"--out_dir={out}",
        "--max_steps=1",
    ]
    assert main([*args, "--heldout_fraction=0", "--eval_every=1", "--progress=false"]) == 0
    assert "no held-out pairs, so the heldout_* metrics are not measured" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and not any(k.startswith("heldout_") for m in metrics for k in m)


def test_render_skip_reasons_are_printed():
    from fastgpt.rl.pairs import RenderStats

    stats = RenderStats(kept=3, unrenderable=1, reasons=["message 1: no such tool"])
    assert stats.summary("train pairs").endswith("could not split); first reasons: message 1: no such tool")


def test_derived_pairs_differ_only_in_the_final_answer():
    solution = "Add them: 12 + 30 = 42.\nSo the total is 42.\n#### 42"
    wrong = corrupt_solution(solution, "42", random.Random(0))
    assert wrong.splitlines()[0] == solution.splitlines()[0]
    new = wrong.splitlines()[-1].removeprefix("#### ")
    assert new != "42" and wrong.splitlines()[1] == f"So the total is {new}."
    pairs = load_pairs("chain_sum_pairs", num_derived=20, log=lambda _: None)
    assert len(pairs) == 20 and all(p.chosen != p.rejected for p in pairs)
    train, heldout = split_pairs(pairs, 0.5)
    assert {p.key for p in train}.isdisjoint(p.key for p in heldout) and len(train) + len(heldout) == 20


def test_derived_pairs_corrupt_decimal_answers():
    # gsm_symbolic has money answers such as 9281.25 (its 350th training problem at seed 0); deriving
    # its pairs stopped the reward/DPO/rlhf.sh commands with "can only corrupt integer answers"
    solution = "He makes 20625*0.45=9281.25 every week\n#### 9281.25"
    wrong = corrupt_solution(solution, "9281.25", random.Random(0))
    new = wrong.splitlines()[-1].removeprefix("#### ")
    assert (
        new != "9281.25"
        and new.endswith(".25")
        and wrong.splitlines()[0] == f"He makes 20625*0.45={new} every week"
    )
    pairs = load_pairs("gsm_symbolic_pairs", num_derived=350, log=lambda _: None)
    assert len(pairs) == 350 and all(p.chosen != p.rejected for p in pairs)
    with pytest.raises(ValueError, match="integer or decimal answers, got 'nan'"):
        corrupt_solution("#### nan", "nan", random.Random(0))


def test_scalar_head_scores_the_last_token_and_round_trips(tmp_path):
    from fastgpt.model import from_pretrained

    model = ScalarHeadModel(from_pretrained(tiny_model_dir(tmp_path / "m")), kind="reward").eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    last = torch.tensor([3, 1])
    with torch.no_grad():
        scores = model.score(ids, last)
        # reference: score of each row alone, read at its own last token (padding after it is never seen)
        alone = torch.stack([model(ids[:1])[0, 3], model(ids[1:, :2])[0, 1]])
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "rm")
    again = ScalarHeadModel.from_pretrained(tmp_path / "rm", require_head=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.score(ids, last), scores)
    assert again.kind == "reward"
    with pytest.raises(FileNotFoundError, match="score_head"):
        ScalarHeadModel.from_pretrained(tmp_path / "m", require_head=True)


def test_pair_order_is_rank_invariant_and_resumes():
    one = PairOrder(10, batch_size=4, seed=3)
    ranks = [PairOrder(10, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # crosses an epoch boundary (10 pairs, 4 per step)
        assert one.next_indices() == ranks[0].next_indices() + ranks[1].next_indices()
    state = one.state_dict()
    expected = one.next_indices()
    resumed = PairOrder(10, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    assert resumed.next_indices() == expected


def _separable_pairs(path, n=160):
    """Chosen replies are about numbers, rejected ones about letters: separable from the tokens."""
    rng = random.Random(0)
    lines = []
    for i in range(n):
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 5)))
        words = " ".join(
            rng.choice(["What", "is", "Let", "me", "add", "The"]) for _ in range(rng.randint(2, 5))
        )
        lines.append(
            json.dumps({"prompt": f"Question {i}: say something.", "chosen": digits, "rejected": words})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reward_model_learns_separable_pairs(tmp_path, capsys):
    from fastgpt.reward import main

    model_dir = tiny_model_dir(tmp_path / "m")
    data = _separable_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "rm"
    args = [f"--model={model_dir}", f"--data={data}", f"--out_dir={out}", "--max_steps=30", "--batch_size=8"]
    args += [
        "--lr=2e-3",
        "--warmup_steps=0",
        "--eval_every=0",
        "--heldout_fraction=0.25",
        "--dtype=fp32",
        "--progress=false",
    ]
    assert main(args) == 0
    assert f"model written to {out / 'model'} (a reward model: " in capsys.readouterr().out
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in evals if "heldout_pair_accuracy" in m]
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == 30 and after["heldout_pairs"] >= 25
    assert after["heldout_pair_accuracy"] >= 0.85, (before, after)
    assert after["heldout_loss"] < before["heldout_loss"]
    # the saved reward model scores held-out pairs as the run's evaluation did
    rm = ScalarHeadModel.from_pretrained(out / "model", require_head=True).eval()
    fmt = format_for(out / "model")
    heldout = split_pairs(load_pairs(str(data), log=lambda _: None), 0.25)[1]
    rows = collate_pairs(render_pairs(heldout, fmt, max_len=160))
    with torch.no_grad():
        scores = rm.score(rows.ids, rows.last)
    b = scores.numel() // 2
    assert (scores[:b] > scores[b:]).float().mean().item() == pytest.approx(after["heldout_pair_accuracy"])
