"""The stage runner: what every training stage (pretrain, sft, grpo, reward, ppo, dpo) does after it has
built its trainer and stage, and the error policy of their commands.

:func:`train_stage` is the shared tail: the baseline evaluation at step 0, the training loop
(``Trainer.fit`` or the stage's RL loop), the chat template in ``out_dir/model``, the final lines
(``done: step ...``, ``model written to ...``, ``metrics: ...``, samples), and releasing DeepSpeed.
:func:`run_stage` wraps a command's body: a :class:`fastgpt.errors.UserError` (an unknown ``--key``, a
value of the wrong type, a model dir or data file that does not exist or cannot be read, a checkpoint
that cannot be resumed, DeepSpeed missing) or a path error (:data:`PATH_ERRORS`) is printed as one
``error:`` line with exit status 2; a run stopped by non-finite losses exits 1; any other exception is a
bug and keeps its traceback (``FASTGPT_DEBUG=1`` shows the traceback of user errors too). The process
group is released either way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastgpt import dist
from fastgpt.chat.template import TEMPLATE_FILE, export_chat_template
from fastgpt.checkpoint import latest_checkpoint
from fastgpt.errors import UserError, report_user_error
from fastgpt.train.trainer import NonFiniteLossError, resolve_dtype

__all__ = [
    "PATH_ERRORS",
    "interrupted",
    "log_baseline",
    "normalize_argv",
    "rank_context",
    "run_stage",
    "stage_main",
    "train_stage",
]

# A path the user gave that cannot be used as given (an --out_dir that is a file, a dir without write
# permission, ...): the message names the path.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

# the metrics the final "done:" line shows: validation (pretrain, SFT) and held-out (RL, pairs) values
FINAL_METRIC_PREFIXES = ("val_", "heldout_")


def normalize_argv(argv: list[str] | None) -> list[str]:
    """``--model=DIR`` (the stages' documented flag) is the loop config's ``--init_from=DIR`` (a bare
    ``--model`` becomes ``--init_from``, which then asks for a value); ``--model.<field>=...``
    architecture overrides are left alone. ``None`` reads ``sys.argv``."""
    return [
        "--init_from" + arg[len("--model") :] if arg == "--model" or arg.startswith("--model=") else arg
        for arg in (sys.argv[1:] if argv is None else argv)
    ]


def rank_context(cfg: Any) -> dict[str, Any]:
    """What a stage object needs to know of this process, as keyword arguments: ``rank``,
    ``world_size``, ``device`` (``--device`` resolved; the process group is started here if it is not
    yet), ``autocast_dtype`` (the loop's, for the forwards a stage runs outside the loop's step) and
    ``log`` (``print`` on rank 0, silent on the others)."""
    info = dist.init_distributed(cfg.device)
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "device": info.device,
        "autocast_dtype": resolve_dtype(cfg.dtype, info.device),
        "log": print if info.is_main else (lambda *_: None),
    }


def log_baseline(trainer: Any, stage: Any) -> dict[str, float]:
    """Evaluate the starting model and log it as step 0 (only for a fresh run, not a resumed one), so
    ``metrics.jsonl`` shows where training started from."""
    if trainer.cfg.resume != "never" and latest_checkpoint(trainer.out_dir) is not None:
        return {}
    result = trainer.evaluate(stage)
    if result:
        trainer.metrics.log({"step": 0, "tokens": 0, "elapsed_s": 0.0, **result})
        trainer.print(" ".join(f"{k}={v:.4f}" for k, v in result.items()), prefix="step 0: ")
    return result


def train_stage(
    trainer: Any,
    stage: Any,
    *,
    loop: Callable[[Any, Any], dict[str, float]] | None = None,
    baseline: bool = True,
    chat_format: Any = None,
    use: str | None = "",
    metrics_line: bool = True,
    sample_lines: Callable[[list[Any]], list[str]] | None = None,
) -> dict[str, float]:
    """Run ``stage`` on ``trainer`` to the end and report; returns the last metrics (final evaluation
    included).

    - ``baseline``: evaluate the starting model first and log it as step 0 (:func:`log_baseline`);
    - ``loop(stage, trainer)``: the training loop (GRPO/PPO's rollout loops); default ``trainer.fit``;
    - ``chat_format``: written into ``out_dir/model`` as its chat template unless the model dir has one;
    - the final lines, printed by rank 0 only: ``done: step N, T tokens in Ss; <val_*/heldout_* metrics>``,
      ``model written to DIR (<use>)`` (``use=""``: how to chat with it; ``None``: nothing after the dir),
      ``metrics: out_dir/metrics.jsonl`` (``metrics_line``), then the lines ``sample_lines`` makes of
      ``trainer.samples(stage)`` (sampled on every rank; None: no samples);
    - last, DeepSpeed's engine is released (:meth:`Trainer.close`).
    """
    if baseline:
        log_baseline(trainer, stage)
    last = loop(stage, trainer) if loop is not None else trainer.fit(stage)
    path = Path(trainer.out_dir) / "model"
    if (
        chat_format is not None
        and trainer.dist.is_main
        and path.is_dir()
        and not (path / TEMPLATE_FILE).is_file()
    ):
        export_chat_template(path, chat_format)
    shown = " ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith(FINAL_METRIC_PREFIXES))
    trainer.print(
        f"done: step {trainer.step}, {trainer.tokens:,} tokens in {trainer.elapsed:.0f}s"
        + (f"; {shown}" if shown else "")
    )
    if use is not None:
        use = use or f"chat: fastgpt chat --model {path}"
    trainer.print(f"model written to {path}" + (f" ({use})" if use else ""))
    if metrics_line:
        trainer.print(f"metrics: {Path(trainer.out_dir) / 'metrics.jsonl'}")
    if sample_lines is not None:
        for line in sample_lines(trainer.samples(stage)):
            trainer.print(line)
    trainer.close()
    return last


def interrupted(name: str) -> int:
    """Ctrl-C (SIGINT; torchrun forwards it to every rank): one line from rank 0 instead of a
    KeyboardInterrupt traceback from each rank; exit status 130 as a shell reports SIGINT."""
    if os.environ.get("RANK", "0") == "0":
        print(
            f"fastgpt {name}: interrupted; run the same command again to resume from the newest checkpoint "
            "in its --out_dir, if one was saved (--save_every=N saves every N steps)",
            file=sys.stderr,
        )
    return 130


def run_stage(name: str, body: Callable[[], int | None]) -> int:
    """Run a stage's ``body`` and turn user errors into one line on stderr and an exit status (see the
    module docstring); other exceptions propagate with their traceback."""
    try:
        status = int(body() or 0)
        dist.destroy(wait_for_peers=True)  # every rank finished: leave together
        return status
    except (UserError, *PATH_ERRORS) as e:
        return report_user_error(name, e)
    except NonFiniteLossError as e:
        print(f"fastgpt {name}: stopped: {e}", file=sys.stderr)
        return 1
    except dist.PeerFailed:  # rank 0 printed the reason
        return 2
    except KeyboardInterrupt:
        return interrupted(name)
    finally:
        dist.destroy()


def stage_main(name: str, body: Callable[[list[str] | None], int | None]) -> Callable[..., int]:
    """The ``main(argv=None) -> int`` of stage ``name``'s command: ``body(argv)`` (``None``: the
    process's arguments) under :func:`run_stage`, so a bad key, value, model dir or data file ends with
    one ``error:`` line and exit status 2."""

    def main(argv: list[str] | None = None) -> int:
        return run_stage(name, lambda: body(argv))

    main.__doc__ = (
        f"``python -m fastgpt.{name} [--key=value ...]`` (``fastgpt {name} --help`` lists the keys); "
        "errors as :func:`fastgpt.stage_cli.run_stage` says."
    )
    main.__module__ = body.__module__
    main.__qualname__ = main.__name__ = "main"
    return main
