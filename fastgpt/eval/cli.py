"""``fastgpt eval``: evaluate a model dir on bits per byte, verifiable tasks and multiple choice.

    fastgpt eval --model out/sft/model --tasks bpb,chain_sum_easy,mc:basics
    fastgpt eval --model out/grpo/model --tasks chain_sum_easy --pass_k 4 --samples 8 --out eval.json

``--tasks`` is a comma-separated list of:

- ``bpb``: bits per byte on the validation split of ``--data`` (default: the data the model's run
  trained on when its ``config.json`` says, else the built-in ``shakespeare`` corpus);
- a task name or ``.jsonl`` file of :func:`fastgpt.tasks.get_task` (``chain_sum_easy``, ``gsm_symbolic``,
  ``game24``, ...): greedy accuracy on its held-out split, plus pass@k with ``--pass_k``;
- ``mc:NAME`` or ``mc:FILE.jsonl``: multiple choice by log-likelihood (built-in ``shakespeare``,
  ``basics``; see :mod:`fastgpt.eval.multiple_choice` for the file format).

Chat models (a chat template in the model dir, or ``--chat yes``) get task and question prompts through
their chat format; ``--chat no`` treats the model as a base model. Results print as a table and are
written as JSON with ``--out``.

With and without tools: the jagged tasks (``jagged_letter_count``, ``jagged_reverse``, ...; see
docs/jagged.md) are scored twice on a chat model, without tools and with the sandboxed Python tool,
and a second table shows both columns and the share of replies that called the tool
(``--compare_tools auto``, the default; ``none`` turns it off; a list such as ``python,calculator``
compares every task with those tools).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fastgpt import cli
from fastgpt.chat.template import format_for
from fastgpt.errors import UserError, report_user_error
from fastgpt.eval.tasks import evaluate_task
from fastgpt.tasks import BUILTIN_TASKS, get_task
from fastgpt.tools import parse_tool_names

__all__ = ["main", "run_eval"]


def build_parser() -> argparse.ArgumentParser:
    p = cli.model_command_parser("fastgpt eval", "Evaluate a model dir.")
    p.add_argument("--tasks", default="bpb,mc:basics", help="comma-separated: bpb, TASK, mc:NAME|FILE")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument(
        "--chat", choices=("auto", "yes", "no"), default="auto", help="prompt through the chat format"
    )
    g = p.add_argument_group("bits per byte")
    g.add_argument("--data", default=None, help="corpus name, prepared data dir or text files")
    g.add_argument("--bpb_tokens", type=int, default=262_144, help="validation tokens to score")
    g = p.add_argument_group("tasks")
    g.add_argument("--problems", type=int, default=100, help="held-out problems per task")
    g.add_argument(
        "--task_options",
        default="",
        help="JSON options for every task's generator, as GRPO's --task_options (e.g. '{\"max_digits\": 1}')",
    )
    g.add_argument("--max_new_tokens", type=int, default=256, help="longest answer generated")
    g.add_argument("--batch_size", type=int, default=16, help="prompts generated together")
    g.add_argument("--pass_k", type=int, default=0, help="also report pass@k (0: greedy only)")
    g.add_argument("--samples", type=int, default=None, help="samples per problem for pass@k (default k)")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature for pass@k")
    g.add_argument("--seed", type=int, default=0, help="seed of the pass@k samples")
    g.add_argument(
        "--tools",
        action="store_true",
        help="run the tool calls chat models make (calculator, python; as GRPO --tools)",
    )
    g.add_argument(
        "--compare_tools",
        default="auto",
        help="also score each task with these tools run: auto (the jagged tasks with python), none, "
        "or a comma-separated list (calculator, python) for every task",
    )
    return p


def compare_tools_for(spec: str, task_name: str) -> tuple[str, ...]:
    """The tools ``--compare_tools`` compares ``task_name`` with (``()``: no comparison)."""
    if spec == "auto":
        return ("python",) if task_name.startswith("jagged_") else ()
    return parse_tool_names(spec, flag="--compare_tools")


def has_chat_template(model_dir: str | Path) -> bool:
    """Whether a model dir carries a chat template (what SFT writes; a pretrained model has none)."""
    folder = Path(model_dir)
    if (folder / "chat_template.jinja").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
    return False


def training_data_of(model_dir: str | Path) -> str | None:
    """The pretraining ``data`` setting behind ``model_dir`` (``out_dir/model``), if known: the ``data``
    of the pretraining run that wrote it, or, for a later stage (SFT, GRPO, DPO, ...; their ``data`` is
    conversations, pairs or nothing), that of the run which wrote its ``init_from`` model, and so on."""
    from fastgpt.train.config import run_config_of  # heavy: loads torch; deferred until used

    for _ in range(16):  # a chain of stages; the bound only guards against a config loop
        loaded = run_config_of(model_dir)
        if loaded is None:
            return None
        if loaded.get("stage", "pretrain") == "pretrain":
            data = loaded.get("data")
            return data if isinstance(data, str) and data else None
        model_dir = loaded.get("init_from")
        if not isinstance(model_dir, str) or not model_dir:
            return None
    return None


def parse_tasks(spec: str) -> list[tuple[str, str]]:
    """``"bpb,chain_sum,mc:basics"`` -> ``[("bpb", "bpb"), ("task", "chain_sum"), ("mc", "basics")]``."""
    out = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        if part == "bpb":
            out.append(("bpb", "bpb"))
        elif part.startswith("mc:"):
            if not part[3:]:
                raise UserError("'mc:' needs a set name or a .jsonl file, e.g. mc:basics")
            out.append(("mc", part[3:]))
        else:
            out.append(("task", part))
    if not out:
        raise UserError("--tasks is empty")
    return out


def task_options(text: str) -> dict[str, Any]:
    """``--task_options`` as a dict (the same JSON GRPO takes, so eval sees GRPO's problems)."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--task_options is not valid JSON: {e.msg}") from None
    if not isinstance(options, dict):
        raise UserError("--task_options must be a JSON object, e.g. '{\"max_digits\": 1}'")
    return options


def check_tasks(tasks: list[tuple[str, str]], options: dict[str, Any]) -> None:
    """Build every task and read every multiple-choice file once, so a typo fails in seconds."""
    from fastgpt.eval.multiple_choice import load_mc  # heavy: loads torch; deferred until used

    for kind, name in tasks:
        if kind == "mc":
            load_mc(name)
        elif kind == "task":
            if name not in BUILTIN_TASKS and not name.endswith(".jsonl") and not Path(name).is_file():
                raise UserError(
                    f"--tasks: unknown eval {name!r}: expected bpb, mc:NAME (mc:basics, mc:shakespeare, "
                    f"mc:FILE.jsonl), a task ({', '.join(BUILTIN_TASKS)}) or a task .jsonl file"
                )
            try:
                get_task(name, **options)
            except TypeError as e:  # an option this task does not take
                raise UserError(f"--task_options for task {name!r}: {e}") from None


def check_args(args: argparse.Namespace) -> None:
    """Numeric flags in range and a writable --out, before a model is loaded or any time is spent."""
    at_least = {"problems": 1, "bpb_tokens": 2, "max_new_tokens": 1, "batch_size": 1, "pass_k": 0}
    for name, low in at_least.items():
        if getattr(args, name) < low:
            raise UserError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.samples is not None and args.samples < max(args.pass_k, 1):
        raise UserError(f"--samples must be >= max(--pass_k, 1) = {max(args.pass_k, 1)}, got {args.samples}")
    from fastgpt.model.sampling import check_sampling  # heavy: loads torch; deferred until used

    check_sampling(args.temperature, flag="--")
    compare_tools_for(args.compare_tools, "")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out!r} is a directory; give a file name such as eval.json")


def run_eval(args: argparse.Namespace, log=print) -> dict[str, Any]:
    import torch  # heavy: torch, loaded only when the command runs (--help starts without it)

    from fastgpt.engine import Engine  # heavy: loads torch; deferred until used
    from fastgpt.model import from_pretrained  # heavy: loads torch; deferred until used
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    tasks = parse_tasks(args.tasks)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(args.model, dtype=args.dtype, device=device)
    tokenizer = Tokenizer.load(args.model)
    chat = args.chat == "yes" or (args.chat == "auto" and has_chat_template(args.model))
    chat_format = format_for(args.model) if chat else None
    if chat_format is not None:
        chat_format.check_fits(model.config.vocab_size, args.model)
    engine = Engine(model, tokenizer, chat_format=chat_format)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for kind, name in tasks:
        t0 = time.perf_counter()
        if kind == "bpb":
            from fastgpt.eval.bpb import evaluate_bpb  # heavy: loads torch; deferred until used

            data = args.data or training_data_of(args.model) or "shakespeare"
            log(f"eval: bits per byte on the validation split of {data!r} ...")
            result = evaluate_bpb(model, tokenizer, data, max_tokens=args.bpb_tokens)
            key = "bpb"
        elif kind == "mc":
            # heavy: loads torch; deferred until used
            from fastgpt.eval.multiple_choice import evaluate_mc, load_mc

            set_name, items = load_mc(name)
            log(f"eval: multiple choice {set_name!r} ({len(items)} items) ...")
            result = evaluate_mc(model, tokenizer, items, chat_format=chat_format)
            key = f"mc:{set_name}"
        else:
            task = get_task(name, **task_options(args.task_options))
            log(f"eval: task {task.name!r} (up to {args.problems} held-out problems) ...")
            result = evaluate_task(
                engine,
                task,
                chat=chat,
                problems=args.problems,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                k=args.pass_k,
                samples=args.samples,
                temperature=args.temperature,
                seed=args.seed,
                tools=args.tools,
                compare_tools=compare_tools_for(args.compare_tools, task.name) if chat else (),
            )
            key = f"task:{task.name}"
        result["seconds"] = round(time.perf_counter() - t0, 2)
        results[key] = result
    return {
        "model": str(Path(args.model).resolve()),
        "chat": chat,
        "device": device,
        "results": results,
        "seconds": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------------------------- output
HEADLINE = {"bpb": ("bpb",), "mc": ("acc", "acc_norm", "chance"), "task": ("greedy_accuracy",)}


def table(report: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per metric; then, when tasks were scored with and
    without tools, a table with both columns and the share of with-tools replies that called a tool."""
    rows = [("eval", "metric", "value", "n")]
    for key, result in report["results"].items():
        kind = key.split(":", 1)[0]
        metrics = list(HEADLINE.get(kind, ()))
        metrics += [m for m in result if m.startswith("pass@")]
        n = result.get("tokens") or result.get("items") or result.get("problems") or ""
        for m in metrics:
            value = result[m]
            rows.append((key, m, f"{value:.4f}" if kind == "bpb" else f"{value:.1%}", f"{n:,}" if n else ""))
    text = _markdown(rows)
    compared = [(k, r["tools_comparison"]) for k, r in report["results"].items() if "tools_comparison" in r]
    if compared:
        rows = [("task", "without tools", "with tools", "tools", "replies calling a tool", "n")]
        for key, c in compared:
            n = f"{report['results'][key]['problems']:,}"
            if "skipped" in c:
                rows.append(
                    (
                        key,
                        f"{report['results'][key]['greedy_accuracy']:.1%}",
                        "n/a",
                        ",".join(c["tools"]),
                        c["skipped"],
                        n,
                    )
                )
                continue
            share = "" if c["tool_call_share"] is None else f"{c['tool_call_share']:.1%}"
            rows.append(
                (key, f"{c['without_tools']:.1%}", f"{c['with_tools']:.1%}", ",".join(c["tools"]), share, n)
            )
        text += "\n\n" + _markdown(rows)
    return text


def _markdown(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.model).is_dir():
        print(f"fastgpt eval: --model {args.model!r} is not a directory", file=sys.stderr)
        return 2
    try:
        check_args(args)  # fail before loading the model
        check_tasks(parse_tasks(args.tasks), task_options(args.task_options))
        report = run_eval(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (UserError, FileNotFoundError) as e:  # TaskError, MCError, DataError are UserErrors
        return report_user_error("eval", e)
    print(table(report))
    if args.out:
        write_json_atomic(args.out, report)
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
