"""metrics.jsonl and wandb: the wandb mode follows WANDB_MODE, else online only with an API key; an
offline run really writes a local wandb run; without the wandb package the run goes on."""

from __future__ import annotations

import json
import sys

import pytest

from fastgpt.train.metrics import MetricsLogger, wandb_mode


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login


def test_mode_offline_without_a_key_online_with_one_env_wins(no_wandb_env, monkeypatch, tmp_path):
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_offline_wandb_run_is_written_next_to_metrics(no_wandb_env, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    out.mkdir()
    logger = MetricsLogger(out, enabled=True, wandb=True, project="t", run_config={"lr": 0.1})
    logger.log({"step": 1, "loss": 2.5})
    logger.log({"step": 1, "val_bpb": 3.0})
    logger.close()
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 2.5},
        {"step": 1, "val_bpb": 3.0},
    ]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_missing_wandb_package_is_not_an_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = MetricsLogger(tmp_path, enabled=True, wandb=True)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert "wandb is not installed" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 1, "loss": 1.0}'
