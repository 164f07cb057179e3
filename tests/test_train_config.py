"""TrainConfig: ``--key=value`` parsing (types, booleans, unknown keys), model overrides on a preset,
and the validation errors a user sees for bad values."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from fastgpt.errors import UserError
from fastgpt.model import GPTConfig
from fastgpt.train.config import TrainConfig, parse_args

ISSUE_KEYS = (
    "preset out_dir data tokenizer vocab_size max_steps time_budget_s batch_size seq_len grad_accum "
    "total_batch_tokens lr min_lr warmup_steps schedule weight_decay grad_clip optimizer dtype compile zero "
    "offload eval_every eval_tokens sample_every save_every keep_last resume seed wandb log_every"
).split()


def test_every_documented_key_exists():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(ISSUE_KEYS) <= fields, sorted(set(ISSUE_KEYS) - fields)


def test_values_are_coerced_to_the_field_types():
    cfg = parse_args(
        TrainConfig,
        [
            "--lr=1e-3",
            "--max_steps=2e3",
            "--batch_size=8",
            "--compile=true",
            "--wandb=False",
            "--zero=2",
            "--schedule=wsd",
            "--time_budget_s=90",
            "--offload",
        ],
    )
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 2000 and isinstance(cfg.max_steps, int)
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.compile is True and cfg.wandb is False and cfg.offload is True
    assert cfg.zero == 2 and cfg.schedule == "wsd" and cfg.time_budget_s == 90.0
    untouched = TrainConfig()
    assert cfg.seed == untouched.seed and cfg.out_dir == untouched.out_dir


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("--compile=maybe", "--compile: expected true or false"),
        ("--batch_size=eight", "--batch_size: expected int"),
        ("--lr=fast", "--lr: expected float"),
        ("--max_steps", "--max_steps needs a value"),
        ("lr=3", "options are --key=value"),
    ],
)
def test_bad_values_name_the_key(arg, needle):
    with pytest.raises(ValueError, match=needle):
        parse_args(TrainConfig, [arg])


@pytest.mark.parametrize(
    "typo, suggestion",
    [("--batchsize=4", "--batch_size"), ("--max_step=3", "--max_steps"), ("--warmup=3", "--warmup_steps")],
)
def test_unknown_key_lists_close_matches(typo, suggestion):
    with pytest.raises(ValueError, match="unknown option") as e:
        parse_args(TrainConfig, [typo])
    assert suggestion in str(e.value)


def test_model_overrides_apply_on_top_of_the_preset():
    cfg = parse_args(
        TrainConfig,
        [
            "--preset=tiny",
            "--model.n_layer=3",
            "--model.n_embd=96",
            "--model.n_head=3",
            "--model.n_kv_head=1",
            "--seq_len=64",
        ],
    )
    got = cfg.model_config(vocab_size=512)
    reference = GPTConfig.from_preset("tiny", n_layer=3, n_embd=96, n_head=3, n_kv_head=1, vocab_size=512)
    assert got.n_layer == 3 and got.n_embd == 96 and got.head_dim == 32 and got.vocab_size == 512
    for field in ("family", "rope_theta", "tie_embeddings", "norm_eps", "intermediate_size"):
        assert getattr(got, field) == getattr(reference, field), field


def test_unknown_model_field_is_an_error():
    cfg = parse_args(TrainConfig, ["--model.n_layers=3"])
    with pytest.raises(ValueError, match="n_layers"):
        cfg.model_config(vocab_size=512)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset=gpt5"], "--preset: expected one of tiny"),
        (["--schedule=linear"], "--schedule"),
        (["--optimizer=sgd"], "--optimizer"),
        (["--dtype=int8"], "--dtype"),
        (["--zero=4"], "--zero"),
        (["--max_steps=0", "--time_budget_s=0"], "max_steps or --time_budget_s"),
        (["--batch_size=0"], "--batch_size"),
        (["--offload=true"], "--offload=true .* needs --zero=1, 2 or 3"),
        (["--warmup_steps=-1"], "--warmup_steps: expected a number >= 0"),
        (["--lr=1e-3", "--min_lr=1e-2"], "min_lr <= lr"),
        (["--keep_last=0"], "--keep_last"),
    ],
)
def test_validate_rejects_bad_settings(args, needle):
    cfg = parse_args(
        TrainConfig, args + (["--max_steps=1"] if not any("max_steps" in a for a in args) else [])
    )
    with pytest.raises(ValueError, match=needle):
        cfg.validate()


def test_auto_optimizer_is_muon_at_every_zero_stage_and_adamw_with_offload(tmp_path):
    for zero in (0, 1, 2, 3):
        cfg = TrainConfig(optimizer="auto", zero=zero, max_steps=1)
        cfg.validate()
        assert cfg.resolved_optimizer() == "muon", zero
        assert cfg.optimizer == "auto"  # resolved where used, never written back
    cfg = TrainConfig(optimizer="auto", zero=2, offload=True, max_steps=1)
    cfg.validate()
    assert cfg.resolved_optimizer() == "adamw"
    cfg.save(tmp_path / "config.json")  # config.json records what ran
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"] == "adamw"
    with pytest.raises(ValueError, match="--optimizer=muon does not run with --offload=true"):
        TrainConfig(optimizer="muon", zero=3, offload=True, max_steps=1).validate()


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(TrainConfig, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in ISSUE_KEYS:
        assert f"--{key}=" in text, key
    assert "--model.<field>" in text


STAGES = [
    ("fastgpt.pretrain", "PretrainConfig"),
    ("fastgpt.sft", "SFTConfig"),
    ("fastgpt.grpo", "GRPOConfig"),
    ("fastgpt.reward", "RewardModelConfig"),
    ("fastgpt.dpo", "DPOConfig"),
    ("fastgpt.ppo", "PPOConfig"),
]


@pytest.mark.parametrize("module,name", STAGES)
def test_every_stage_help_describes_each_key_it_shows(module, name, capsys):
    import dataclasses
    import importlib

    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit):
        parse_args(cls, ["--help"])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m {module} [--key=value ...]")
    rows = {}
    key = None
    for (
        line
    ) in text.splitlines():  # "  --key=default   description" (a long key: description on the next line)
        if line.startswith("  --"):
            key, _, rest = line.strip().partition(" ")
            rows[key] = rest.strip()
        elif key and line.startswith("   ") and not rows[key]:
            rows[key] = line.strip()
    shown = {k.split("=")[0].split(" ")[0] for k in rows}
    for f in dataclasses.fields(cls):
        if f.name == "init_from" and cls.model_flag:
            assert "--model" in shown and "--model=DIR (or --init_from=DIR" in text
        elif f.name != "model":
            assert f"--{f.name}" in shown, f"{name}: --{f.name} missing from --help"
    undescribed = [k for k, desc in rows.items() if not desc]
    assert not undescribed, f"{name}: keys without a description: {undescribed}"


def test_a_deepspeed_config_that_is_missing_or_not_json_names_the_flag(tmp_path, capsys):
    """Was '[Errno 2] No such file or directory: ...' (or a JSONDecodeError) from every rank, naming
    neither the flag nor what was expected."""
    from fastgpt.pretrain import main as pretrain_main

    missing = tmp_path / "zero3_mine.json"
    code = pretrain_main([f"--deepspeed_config={missing}", "--zero=3", "--max_steps=1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fastgpt pretrain: error: --deepspeed_config={missing}: no such file, expected a JSON file"
    ]
    missing.write_text("{stage: 3}")
    with pytest.raises(ValueError, match=r"--deepspeed_config=.*: not a readable JSON file"):
        TrainConfig(max_steps=1, zero=3, deepspeed_config=str(missing)).validate()
    missing.write_text("[3]")
    with pytest.raises(ValueError, match=r"--deepspeed_config=.*: expected a JSON object, got list"):
        TrainConfig(max_steps=1, zero=3, deepspeed_config=str(missing)).validate()


def test_an_out_dir_that_is_a_file_names_the_flag(tmp_path, capsys):
    """An --out_dir that is a file is refused by the config's validation, which every rank runs before
    any work (so no rank is left waiting for another), as one line naming the flag."""
    from fastgpt.pretrain import main as pretrain_main

    afile = tmp_path / "run"
    afile.write_text("")
    code = pretrain_main([f"--out_dir={afile}", "--max_steps=1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastgpt pretrain: error: --out_dir={afile}: expected a directory, but it is a file"]
    with pytest.raises(ValueError, match=f"but {afile} is a file"):
        TrainConfig(max_steps=1, out_dir=str(afile / "sub")).validate()
    TrainConfig(max_steps=1, out_dir=str(tmp_path / "new" / "dir")).validate()  # not there yet: fine


def _stage_config(module: str, name: str) -> type:
    import importlib

    return getattr(importlib.import_module(module), name)


# keys each stage reads beyond the loop's (LoopConfig): the scoped configs must declare exactly these
READS = {
    "PretrainConfig": {"grad_accum", "seq_len", "total_batch_tokens", "sample_every", "sample_tokens"},
    "SFTConfig": {"grad_accum", "seq_len", "total_batch_tokens", "sample_every", "sample_tokens"},
    "DPOConfig": {"grad_accum"},
    "RewardModelConfig": {"grad_accum"},
    "GRPOConfig": {"sample_every"},
    "PPOConfig": set(),
}
OTHER_STAGES_KEYS = {
    "preset",
    "vocab_size",
    "eval_tokens",
    "seq_len",
    "total_batch_tokens",
    "grad_accum",
    "sample_every",
    "sample_tokens",
    "data",
    "tokenizer",
}


@pytest.mark.parametrize("module,name", STAGES)
def test_each_stage_help_lists_only_its_own_keys(module, name, capsys):
    import dataclasses

    cls = _stage_config(module, name)
    with pytest.raises(SystemExit):
        parse_args(cls, ["--help"])
    text = capsys.readouterr().out
    shown = set(re.findall(r"^  --(\w+)", text, flags=re.M))
    own = {f.name for f in dataclasses.fields(cls)}
    assert shown <= own | {"model"}, shown - own
    for key in OTHER_STAGES_KEYS - own:
        assert f"--{key}" not in shown, f"{name} --help shows --{key}, which it does not read"
    assert READS[name] <= own, READS[name] - own


@pytest.mark.parametrize(
    "module,name,flag,nearest",
    [
        ("fastgpt.grpo", "GRPOConfig", "--seq_len=128", "--max_new_tokens"),  # named by the reason
        ("fastgpt.grpo", "GRPOConfig", "--grad_accum=2", "--batch_size"),
        ("fastgpt.ppo", "PPOConfig", "--sample_evry=5", "--save_every"),
        ("fastgpt.dpo", "DPOConfig", "--seq_len=128", "--max_len"),
        ("fastgpt.reward", "RewardModelConfig", "--total_batch_tokens=4096", "--batch_size"),
        ("fastgpt.sft", "SFTConfig", "--vocab_size=100", "--model"),
        ("fastgpt.sft", "SFTConfig", "--eval_tokens=100", "--val_fraction"),
        ("fastgpt.pretrain", "PretrainConfig", "--max_len=100", "--max_steps"),
    ],
)
def test_a_key_the_stage_does_not_have_is_one_line_naming_stage_and_nearest(module, name, flag, nearest):
    cls = _stage_config(module, name)
    with pytest.raises(UserError) as e:
        parse_args(cls, [flag])
    message = str(e.value)
    assert "\n" not in message
    stage = module.rsplit(".", 1)[1]
    assert f"unknown option {flag.split('=')[0]} for {stage}" in message
    assert nearest in message


@pytest.mark.parametrize("module,name", [m for m in STAGES if m[1] != "PretrainConfig"])
def test_architecture_overrides_are_refused_where_the_model_comes_from_a_dir(module, name):
    with pytest.raises(
        UserError, match=r"--model.n_layer for \w+ \(the architecture comes with the model dir"
    ):
        parse_args(_stage_config(module, name), ["--model.n_layer=2"])


def test_validate_never_writes_the_config():
    import dataclasses

    for module, name in STAGES:
        cls = _stage_config(module, name)
        cfg = cls(max_steps=1, optimizer="auto") if name != "SFTConfig" else cls(optimizer="auto")
        before = dataclasses.asdict(cfg)
        cfg.validate()
        assert dataclasses.asdict(cfg) == before, name


def test_sft_default_budget_and_model_are_computed_not_written():
    from fastgpt.sft import DEFAULT_TIME_BUDGET_S, SFTConfig

    cfg = SFTConfig()
    assert cfg.time_budget() == DEFAULT_TIME_BUDGET_S and cfg.time_budget_s == 0
    assert SFTConfig(max_steps=5).time_budget() == 0  # --max_steps alone is not cut short
    assert SFTConfig(init_from="m").model_dir() == "m" and cfg.init_from == ""


def test_every_documented_stage_command_parses():
    """The keys of every ``fastgpt <stage> ...`` / ``python -m fastgpt.<stage> ...`` line in README.md,
    docs/ and launch/ are keys of that stage's config (arrays the launch scripts pass included)."""
    import dataclasses
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    classes = {m.rsplit(".", 1)[1]: _stage_config(m, n) for m, n in STAGES}
    files = [
        root / "README.md",
        *sorted((root / "docs").rglob("*.md")),
        *sorted((root / "launch").glob("*.sh")),
    ]
    arrays = {"PRETRAIN": "pretrain", "SFT": "sft", "GRPO": "grpo"}  # launch/speedrun.sh's per-stage flags
    checked, bad = 0, []
    for path in files:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            m = re.search(r"fastgpt[ .](pretrain|sft|grpo|reward|dpo|ppo)\b(.*)", line)
            a = re.match(r"\s*(PRETRAIN|SFT|GRPO)=\((.*)", line)
            if not (m or a):
                continue
            stage, rest = (m.group(1), m.group(2)) if m else (arrays[a.group(1)], a.group(2))
            names = {f.name for f in dataclasses.fields(classes[stage])} | {"help", "model"}
            for key in re.findall(r"--([a-z_.]+)", re.split(r"[|;`]|&&", rest)[0]):
                checked += 1
                if key.split(".")[0] not in names or (
                    key.startswith("model.") and "model" not in names - {"model"}
                ):
                    if not (key.startswith("model.") and stage == "pretrain"):
                        bad.append(f"{path.name}: fastgpt {stage} --{key}")
    assert checked > 50
    assert not bad, bad


def test_sft_build_writes_nothing_into_its_config(tmp_path):
    """Values SFT derives (its default budget, the model dir, the row length capped at the model's
    context) reach the trainer and config.json, not the config object."""
    from fastgpt.model import GPT
    from fastgpt.sft import DEFAULT_TIME_BUDGET_S, SFTConfig, build
    from fastgpt.tokenizer import Tokenizer

    tok = Tokenizer.train(["What is 2 + 3? It is 5. Hello there, friend. " * 30], vocab_size=300)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, max_seq_len=512
    )
    GPT(config).save_pretrained(tmp_path / "model")
    tok.save(tmp_path / "model")
    cfg = parse_args(
        SFTConfig,
        [
            f"--init_from={tmp_path / 'model'}",
            f"--out_dir={tmp_path / 'run'}",
            "--data=identity",
            "--seq_len=4096",
        ],
    )
    before = dataclasses.asdict(cfg)
    trainer, _ = build(cfg)
    assert dataclasses.asdict(cfg) == before
    assert trainer.seq_len == 512  # capped at the model's context, in the trainer only
    assert trainer.cfg.time_budget() == DEFAULT_TIME_BUDGET_S
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["init_from"] == str(tmp_path / "model") and saved["seq_len_resolved"] == 512
