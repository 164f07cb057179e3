"""Training configuration: scoped dataclasses with defaults that run, overridable as ``--key=value``.

Each stage's config declares the keys it reads and nothing else (docs/architecture.md, "Configuration"):
:class:`LoopConfig` (what the training loop reads) plus the groups the stage uses -- :class:`FitConfig`
(``grad_accum``), :class:`TokenRowsConfig` (``seq_len``, ``total_batch_tokens``), :class:`SampleConfig`
(printed samples) -- plus its own keys. :class:`TrainConfig` is the pretraining-shaped whole (a fresh
model from ``--preset`` with ``--model.<field>=value`` overrides, a token corpus, a tokenizer).
:func:`parse_args` parses every stage the same way and rejects a key the stage does not have with one
line naming the stage and the nearest key it does have. Values a stage derives (a default model dir, a
default time budget, the step's shape) are computed where they are used; a config is never written
after parsing.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fastgpt.cli import warn_deprecated_spelling
from fastgpt.errors import UserError
from fastgpt.model.config import PRESETS, GPTConfig


@dataclass
class LoopConfig:
    """What the training loop (:class:`fastgpt.train.trainer.Trainer`) reads: every stage has these keys.

    A stage's config is this base plus the groups it uses (:class:`FitConfig`, :class:`TokenRowsConfig`,
    :class:`SampleConfig`) plus its own keys, so its ``--help`` lists exactly what it reads and any other
    key is an error naming the stage and the nearest key it does have (:func:`parse_args`).
    """

    model_flag: ClassVar[bool] = False  # the stage takes --model=DIR for --init_from=DIR
    # keys of other stages -> why this stage has none: added to the unknown-key error (see parse_args)
    unused: ClassVar[dict[str, str]] = {}
    min_batch_size: ClassVar[int] = 1  # RL stages allow 0 (= a rank's whole rollout per micro-batch)

    # --- what to train -----------------------------------------------------------------------------
    init_from: str = ""  # start from a model dir (fastgpt or HF format) instead of a fresh preset
    out_dir: str = "out/pretrain"  # run dir: config.json, metrics.jsonl, checkpoints/, model/
    # --- how long ----------------------------------------------------------------------------------
    max_steps: int = 0  # 0: run until time_budget_s (one of the two must be set)
    time_budget_s: float = 0.0  # wall-clock budget for the training steps (schedule follows it)
    # --- batch -------------------------------------------------------------------------------------
    batch_size: int = 16  # sequences per rank per micro-batch
    # --- optimisation ------------------------------------------------------------------------------
    optimizer: str = (
        "adamw"  # adamw | muon (hidden matrices; AdamW for the rest) | auto (muon; adamw with --offload)
    )
    lr: float = 3e-3  # peak learning rate (AdamW; Muon has muon_lr)
    min_lr: float = 3e-4  # learning rate at the end of the schedule
    warmup_steps: int = 50  # linear warmup from 0 to lr
    schedule: str = "cosine"  # cosine | wsd | constant
    wsd_decay_frac: float = 0.2  # wsd: share of the run spent decaying to min_lr
    weight_decay: float = 0.1  # AdamW decay on matrices (never on norms, biases, embeddings)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    muon_lr: float = 0.02  # Muon learning rate for the hidden matrices
    muon_momentum: float = 0.95  # Muon Nesterov momentum
    grad_clip: float = 1.0  # 0 disables
    max_nonfinite_steps: int = 5  # stop after this many NaN/inf losses in a row
    # --- numerics and systems ----------------------------------------------------------------------
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; master weights stay fp32)
    compile: bool = False  # torch.compile the model (slow first steps, faster after)
    device: str = "auto"  # auto | cpu | cuda
    zero: int = 0  # DeepSpeed ZeRO stage 0..3 (multi-process runs always go through DeepSpeed)
    offload: bool = False  # ZeRO CPU offload of optimizer state (and parameters for zero=3)
    deepspeed_config: str = ""  # optional base DeepSpeed JSON (launch/deepspeed/*.json)
    activation_checkpointing: bool = False  # recompute each Transformer block in the backward (less memory)
    # --- evaluation, checkpoints, logging ----------------------------------------------------------
    eval_every: int = 100  # 0 disables
    save_every: int = 0  # 0: save only at the end
    keep_last: int = 2  # complete checkpoints kept in out_dir/checkpoints
    resume: str = "auto"  # auto (latest complete checkpoint in out_dir) | never | <checkpoint dir>
    seed: int = 1337  # model init, data order and sampling
    log_every: int = 10  # steps between metrics.jsonl lines / console updates
    wandb: bool = False  # log to Weights & Biases (offline unless a key is set; WANDB_MODE wins)
    wandb_project: str = "fastgpt"  # W&B project name
    progress: bool = True  # console progress bar (rank 0 only)

    # ------------------------------------------------------------------------------------------------
    def time_budget(self) -> float:
        """The wall-clock budget the run uses (seconds; 0: none). A stage with a default budget
        overrides this instead of writing ``time_budget_s``."""
        return self.time_budget_s

    def resolved_optimizer(self) -> str:
        """``--optimizer`` with ``auto`` resolved: Muon, or AdamW with ``--offload`` (whose CPU step
        cannot run Muon). ``config.json`` records this value."""
        if self.optimizer == "auto":
            return "adamw" if self.offload else "muon"
        return self.optimizer

    def validate(self) -> None:
        """Check every key against what the loop accepts (a :class:`UserError` naming the key); reads
        ``self`` only. Stages extend it for their own keys."""

        def bad(name: str, expected: str) -> UserError:
            return UserError(f"--{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.schedule not in ("cosine", "wsd", "constant"):
            raise bad("schedule", "cosine, wsd or constant")
        if self.optimizer not in ("adamw", "muon", "auto"):
            raise bad("optimizer", "adamw, muon or auto")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise bad("dtype", "auto, fp32, bf16 or fp16")
        if self.zero not in (0, 1, 2, 3):
            raise bad("zero", "0, 1, 2 or 3")
        if self.max_steps <= 0 and self.time_budget() <= 0:
            raise UserError("set --max_steps or --time_budget_s (both are 0)")
        if self.batch_size < self.min_batch_size:
            raise bad("batch_size", f"an integer >= {self.min_batch_size}")
        names = {f.name for f in dataclasses.fields(self)}
        for name in ("seq_len", "grad_accum", "log_every", "keep_last"):
            if name in names and getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in (
            "max_steps",
            "time_budget_s",
            "warmup_steps",
            "eval_every",
            "sample_every",
            "save_every",
            "grad_clip",
            "weight_decay",
            "total_batch_tokens",
            "eval_tokens",
        ):
            if name in names and getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise UserError(
                f"--lr / --min_lr: expected 0 <= min_lr <= lr and lr > 0, got {self.lr} / {self.min_lr}"
            )
        if self.resume not in ("auto", "never") and not self.resume:
            raise bad("resume", "auto, never or a checkpoint dir")
        if self.offload and self.zero == 0:
            raise UserError("--offload=true moves ZeRO-partitioned state to CPU: it needs --zero=1, 2 or 3")
        if self.optimizer == "muon" and self.offload:
            raise UserError(
                "--optimizer=muon does not run with --offload=true (its optimizer step needs the "
                "partitions on the training device); use --optimizer=adamw (or auto) with --offload"
            )
        if self.deepspeed_config:
            _check_json_file("deepspeed_config", self.deepspeed_config)
        _check_dir_path("out_dir", self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write the config as JSON with ``extra`` keys (resolved values win over the given ones)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        data = {**self.to_dict(), "optimizer": self.resolved_optimizer(), **extra}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class FitConfig(LoopConfig):
    """Stages whose step is ``grad_accum`` micro-batches drawn from a data stream (``Trainer.fit``)."""

    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size*grad_accum*ranks)


@dataclass
class TokenRowsConfig(FitConfig):
    """Stages that train on fixed-length token rows (pretraining, SFT)."""

    seq_len: int = 256  # tokens per sequence (capped at the model's max_seq_len)
    total_batch_tokens: int = 0  # if > 0, derives grad_accum = total / (batch_size*seq_len*ranks)


@dataclass
class SampleConfig:
    """Stages that print text samples of ``sample_tokens`` tokens (a final sample is always printed)."""

    sample_every: int = 0  # 0 disables periodic samples (a final sample is always printed)
    sample_tokens: int = 128  # tokens per printed sample


@dataclass
class TrainConfig(SampleConfig, TokenRowsConfig):
    """The pretraining-shaped config: a fresh model from ``--preset`` (with ``--model.<field>``
    overrides) on a token corpus, with a tokenizer trained on it when none is given."""

    preset: str = "tiny"  # model preset (fastgpt.model.PRESETS); ignored when init_from is set
    model: dict[str, Any] = field(default_factory=dict)  # --model.<field>=value architecture overrides
    data: str = "shakespeare"  # built-in corpus name, prepared shard dir, or raw files/globs
    tokenizer: str = ""  # "" trains one on the data (vocab_size tokens); else a path or vocab name
    vocab_size: int = 4096  # size of the tokenizer trained when --tokenizer is empty
    eval_tokens: int = 65536  # validation tokens per evaluation (a fixed held-out slice)

    def validate(self) -> None:
        if not self.init_from and self.preset not in PRESETS:
            raise UserError(f"--preset: expected one of {', '.join(PRESETS)}, got {self.preset!r}")
        super().validate()

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The architecture: the preset with ``--model.*`` overrides (and the tokenizer's vocab)."""
        overrides = dict(self.model)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        overrides.setdefault("max_seq_len", max(self.seq_len, PRESETS[self.preset].get("max_seq_len", 0)))
        return GPTConfig.from_preset(self.preset, **overrides)


def run_config_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The saved config of the training run that wrote ``model_dir`` (a run writes its config to
    ``out_dir/config.json`` and its model to ``out_dir/model``), or None when there is none to read.
    Its ``stage`` says which stage trained the model, ``init_from`` which model that stage started from."""
    try:
        loaded = json.loads((Path(model_dir).resolve().parent / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return None
    return loaded if isinstance(loaded, dict) else None


C = TypeVar("C", bound=LoopConfig)


def _check_json_file(name: str, path: str) -> None:
    """``--name=path`` must be a readable JSON object; checked before any rank starts so the error names
    the flag and the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"--{name}={path}: {'is a directory' if p.is_dir() else 'no such file'}, expected a JSON file"
        )
    try:
        value = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--{name}={path}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"--{name}={path}: expected a JSON object, got {type(value).__name__}")


def _check_dir_path(name: str, path: str) -> None:
    """``--name=path`` is (or can be made) a directory: neither it nor a parent is a file. Checked on every
    rank before the run dir is created, so no rank fails alone while the others wait in a barrier."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                what = "it is a file" if p == Path(path) else f"{p} is a file"
                raise UserError(f"--{name}={path}: expected a directory, but {what}")
            return


def _coerce(raw: str, annotation: Any, key: str) -> Any:
    """Turn the string ``raw`` into the type of field ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        annotation = args[0]
    if annotation is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"--{key}: expected true or false, got {raw!r}")
    if annotation in (int, float):
        try:
            return annotation(float(raw)) if annotation is int and "e" in raw.lower() else annotation(raw)
        except ValueError:
            raise UserError(f"--{key}: expected {annotation.__name__}, got {raw!r}") from None
    return raw


def _guess(value: str) -> Any:
    """Model override values: ints, floats, booleans, None or JSON; else the string."""
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.lower() in ("none", "null"):
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_args(cls: type[C], argv: list[str] | None) -> C:
    """``--key=value`` arguments -> ``cls`` instance. Unknown keys fail with the closest matches."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for arg in argv or []:
        if arg in ("-h", "--help"):
            print(_help(cls))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: options are --key=value")
        key, sep, raw = arg[2:].partition("=")
        if not sep:  # --flag alone means true for booleans
            raw = "true"
        if "-" in key:  # the one CLI dialect is --snake_case; hyphens are a deprecated alias
            snake = key.replace("-", "_")
            warn_deprecated_spelling(f"fastgpt {_stage_name(cls)}", "--" + key, "--" + snake)
            key = snake
        if key.startswith("model.") and "model" in fields:
            model[key[len("model.") :]] = _guess(raw)
            continue
        if key not in fields or key == "model":
            raise UserError(_unknown_key(cls, key, fields))
        if not sep and hints[key] is not bool:
            raise UserError(f"--{key} needs a value: --{key}=...")
        values[key] = _coerce(raw, hints[key], key)
    if model:
        values["model"] = model
    return cls(**values)


def _unknown_key(cls: type, key: str, fields: set[str]) -> str:
    """One line for a key ``cls`` does not have: the stage, why (when another stage has the key) and the
    nearest key it does have."""
    stage = _stage_name(cls)
    options = sorted(f for f in fields if f != "model")
    if getattr(cls, "model_flag", False):
        options.append("model")
    if key.startswith("model."):  # an architecture override in a stage that loads its model
        return f"unknown option --{key} for {stage} (the architecture comes with the model dir --model)"
    why = dict(getattr(cls, "unused", {})).get(key)
    close = difflib.get_close_matches(key, options, n=3)
    if not close and not why:  # always name the nearest key, however far
        close = difflib.get_close_matches(key, options, n=1, cutoff=0)
    reason = f" ({why})" if why else ""
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return f"unknown option --{key} for {stage}{reason}{hint} (see fastgpt {stage} --help)"


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: its trailing # comment}`` read from the source of ``cls`` and its dataclass bases, so
    ``--help`` describes each key with the same words the code does (a subclass's comment wins)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # no source (e.g. a frozen app): keys are shown without comments
            continue
        last = None
        for line in source.splitlines():
            m = re.match(r"^    (\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
            if m and not line.lstrip().startswith("#"):
                last = m.group(1)
                if m.group(2):
                    comments[last] = m.group(2).strip()
            elif last and line.startswith("        ") and "#" in line:  # a wrapped default's comment
                comments.setdefault(last, line.split("#", 1)[1].strip())
    return comments


def _stage_module(cls: type) -> str:
    """The module that defines a stage's config (``fastgpt.grpo``), also when run as ``python -m``."""
    module = cls.__module__
    if module == "__main__":  # run as `python -m fastgpt.<stage>`: the spec keeps the real name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else module
    return module


def _stage_name(cls: type) -> str:
    return _stage_module(cls).rsplit(".", 1)[-1]


def _help(cls: type) -> str:
    module = _stage_module(cls)
    stage = _stage_name(cls)
    lines = [f"usage: python -m {module} [--key=value ...]   (or: fastgpt {stage} ...)"]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # not the dataclass stand-in
        lines += ["", inspect.cleandoc(cls.__doc__)]
    lines += ["", "Options (booleans as true/false, *_every=0 disables that action):"]
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name == "model":
            lines.append(_help_row("--model.<field>=value", "architecture override (see fastgpt.GPTConfig)"))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            default = str(default).lower()
        key = f"--{f.name}={default}"
        comment = comments.get(f.name, "")
        if f.name == "init_from" and getattr(cls, "model_flag", False):
            key, comment = f"--model=DIR (or --init_from=DIR, default {default or 'none'})", comment
        lines.append(_help_row(key, comment))
    return "\n".join(lines)


def _help_row(key: str, comment: str) -> str:
    return f"  {key:<34} {comment}".rstrip() if len(key) <= 34 else f"  {key}\n  {'':<34} {comment}".rstrip()
