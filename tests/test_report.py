"""``fastgpt report`` on a pipeline dir built here with known metrics: the headline numbers, times,
tokens and parameter count it prints are the ones written (parameters counted by torch), every run gets
a real PNG, eval tables are included, and a truncated metrics line is skipped and counted."""

from __future__ import annotations

import json
import sys

import matplotlib.image
import pytest
import torch
from safetensors.torch import save_file

from fastgpt.eval.report import discover, fmt_duration, main


def write_run(folder, stage, records, config=None, bad_tail=False):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"stage": stage, "preset": "tiny", "device": "cpu", **(config or {})})
    )
    text = "".join(json.dumps(r) + "\n" for r in records)
    if bad_tail:
        text += '{"step": 99, "loss": '  # a run killed while writing
    (folder / "metrics.jsonl").write_text(text)


@pytest.fixture
def pipeline(tmp_path):
    root = tmp_path / "speedrun"
    pre = [
        {"step": s, "tokens": 4096 * s, "loss": 8 - s / 10, "lr": 1e-3, "elapsed_s": 3.0 * s}
        for s in range(1, 21)
    ]
    pre += [
        {"step": 10, "val_bpb": 3.1, "val_loss": 7.0, "elapsed_s": 30.0},
        {"step": 20, "val_bpb": 2.42, "val_loss": 6.5, "elapsed_s": 61.5},
    ]
    write_run(root / "pretrain", "pretrain", pre, {"data": "shakespeare"}, bad_tail=True)
    sft = [
        {"step": s, "tokens": 1000 * s, "loss": 3 - s / 10, "elapsed_s": 2.0 * s} for s in range(1, 11)
    ] + [{"step": 10, "val_loss": 1.75, "elapsed_s": 20.0}]
    write_run(root / "sft", "sft", sft)
    grpo = [{"step": 0, "heldout_accuracy": 0.1, "elapsed_s": 1.0}]
    grpo += [
        {
            "step": s,
            "reward_mean": 0.1 * s,
            "accuracy": 0.1 * s,
            "kl": 0.01 * s,
            "loss": -0.1,
            "elapsed_s": 10.0 * s,
        }
        for s in range(1, 5)
    ]
    grpo += [{"step": 4, "heldout_accuracy": 0.4, "elapsed_s": 46.0}]
    write_run(root / "grpo", "grpo", grpo)
    reward = [{"step": s, "loss": 0.7 - s / 20, "elapsed_s": s} for s in range(1, 6)]
    reward += [{"step": 0, "heldout_pair_accuracy": 0.5, "heldout_margin": 0.0, "heldout_pairs": 30}]
    reward += [
        {"step": 5, "heldout_pair_accuracy": 0.9, "heldout_margin": 2.0, "heldout_pairs": 30, "elapsed_s": 6}
    ]
    write_run(root / "reward", "reward", reward)
    dpo = [{"step": 0, "heldout_margin": 0.0, "heldout_reward_accuracy": 0.5}]
    dpo += [{"step": 5, "heldout_margin": 1.25, "heldout_reward_accuracy": 0.8, "elapsed_s": 9.5}]
    write_run(root / "dpo", "dpo", dpo)
    tensors = {
        "wte.weight": torch.zeros(300, 64),
        "blocks.0.attn.weight": torch.zeros(64, 192),
        "norm.weight": torch.zeros(64),
    }
    (root / "grpo" / "model").mkdir()
    save_file(tensors, str(root / "grpo" / "model" / "model.safetensors"))
    evaluation = {
        "model": str(root / "grpo" / "model"),
        "chat": True,
        "results": {
            "bpb": {"bpb": 2.41, "tokens": 5000},
            "task:chain_sum_easy": {
                "greedy_accuracy": 0.375,
                "problems": 8,
                "examples": [
                    {"question": "What is 2 + 3?", "completion": "#### 5", "answer": "5", "correct": True}
                ],
            },
        },
    }
    (root / "eval.json").write_text(json.dumps(evaluation))
    walls = [("tokenizer", 30), ("pretrain", 90), ("sft", 40), ("grpo", 60), ("eval", 25)]
    (root / "timings.jsonl").write_text(
        "".join(json.dumps({"stage": s, "wall_s": w, "load_5min": 2.5}) + "\n" for s, w in walls)
    )
    return root, sum(t.numel() for t in tensors.values())


def test_report_of_a_pipeline(pipeline):
    root, n_params = pipeline
    assert main(["--runs", str(root), "--note", "made in a test"]) == 0
    text = (root / "report.md").read_text()
    assert f"by `fastgpt report --runs {root} --note 'made in a test'`" in text  # runnable as printed
    runs, _, timings = discover([str(root)])
    assert timings["eval"] == {"wall_s": 25, "load_5min": 2.5}
    assert [r.stage for r in runs] == ["pretrain", "sft", "reward", "grpo", "dpo"]  # pipeline order
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert (
        "val_bpb 2.42" in rows["pretrain"] and "1m 02s" in rows["pretrain"] and "81.92k" in rows["pretrain"]
    )
    assert "val_loss 1.75" in rows["sft"]
    assert "heldout_accuracy 10.0% → 40.0%" in rows["grpo"]
    assert "heldout_pair_accuracy 50.0% → 90.0%" in rows["reward"]
    assert "heldout_margin 0 → 1.25" in rows["dpo"]
    assert "| heldout_pairs |" not in text  # a count, not a metric
    assert f"| parameters | {n_params:,} |" in text
    assert "**2m 23s**" in text  # training time: 61.5 + 20 + 6 + 46 + 9.5 seconds
    assert "**4m 05s**" in text  # wall time: 30 + 90 + 40 + 60 + 25 seconds
    assert "1m 30s" in rows["pretrain"] and "0m 30s" in rows["tokenizer"] and "| 2.5 |" in rows["sft"]
    stages = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert stages[1:9] == ["tokenizer", "pretrain", "sft", "grpo", "eval", "reward", "dpo", "**total**"]
    assert "made in a test" in text and "## Hardware" in text and "CPU:" in text
    assert "task:chain_sum_easy" in text and "37.5%" in text and "What is 2 + 3?" in text
    assert "1 unreadable line(s)" in text
    for stage in ("pretrain", "sft", "grpo", "reward"):
        assert f"![{stage} curves](plots/{stage}.png)" in text
        image = matplotlib.image.imread(root / "plots" / f"{stage}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_report_errors_and_explicit_runs(pipeline, tmp_path, capsys):
    root, _ = pipeline
    assert main(["--runs", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["--runs", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err
    out = tmp_path / "card" / "r.md"
    assert main(["--runs", str(root / "sft"), str(root / "pretrain"), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.index("### sft") < text.index("### pretrain")  # runs named one by one keep their order
    assert (tmp_path / "card" / "plots" / "sft.png").is_file()


@pytest.mark.parametrize("seconds,text", [(0, "0m 00s"), (59.6, "1m 00s"), (3725, "1h 02m 05s"), (None, "—")])
def test_durations(seconds, text):
    assert fmt_duration(seconds) == text


def test_without_matplotlib_the_report_is_text_only(pipeline, tmp_path, monkeypatch):
    root, _ = pipeline
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an install without the [report] extra
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "text_only.md"
    assert main(["--runs", str(root), "--out", str(out)]) == 0
    text = out.read_text()
    assert "![" not in text and "pip install 'fastgpt[report]'" in text and "| pretrain |" in text


def test_report_shows_the_median_time_split_of_rl_runs(tmp_path):
    split = [(4.0, 0.5, 1.0), (6.0, 0.5, 3.0), (5.0, 0.5, 2.0)]  # rollout, reward, update per step
    records = [
        {"step": i + 1, "loss": 0.1, "time_rollout_s": r, "time_reward_s": w, "time_logprobs_s": 0.0}
        | {"time_update_s": u}
        for i, (r, w, u) in enumerate(split)
    ]
    write_run(tmp_path / "grpo", "grpo", records)
    write_run(tmp_path / "sft", "sft", [{"step": 1, "loss": 1.0, "time_update_s": 1.0}])
    out = tmp_path / "report.md"
    assert main(["--runs", str(tmp_path / "grpo"), str(tmp_path / "sft"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Where RL steps spend their time" in text
    section = text.split("## Where RL steps spend their time")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| grpo |")]
    # medians: rollout 5, score not logged, reward 0.5, logprobs 0, update 2; total 7.5
    assert row == "| grpo | 3 | 5.00 s | — | 0.50 s | 0.00 s | 2.00 s | 7.50 s | 67% |"
    assert "| sft |" not in section


def test_plot_panels_leave_out_timings_and_the_kl_of_a_run_without_reference(tmp_path):
    """A phase timing whose name matches a group ("time_reward_s") is not drawn in that group's panel,
    and "kl" gets a panel only when the run had a reference model (beta > 0)."""
    from fastgpt.eval.report import plot_panels

    records = [
        {"step": s, "reward_mean": 0.1 * s, "time_reward_s": 0.01, "kl": 0.0, "loss": -0.1}
        for s in range(1, 5)
    ]
    for beta, want_kl in ((0.0, False), (0.04, True)):
        write_run(tmp_path / f"b{beta}", "grpo", records, {"beta": beta})
        (run,), _, _ = discover([str(tmp_path / f"b{beta}")])
        panels = dict(plot_panels(run))
        assert panels["reward"] == ["reward_mean"]
        assert ("KL to reference" in panels) is want_kl
