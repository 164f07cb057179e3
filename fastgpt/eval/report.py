"""``fastgpt report``: one Markdown report card for the runs of a pipeline, with plots.

    fastgpt report --runs out/speedrun                      # a dir of run dirs (pretrain/, sft/, ...)
    fastgpt report --runs out/pretrain out/sft --out report.md

Everything comes from files the stages write (DESIGN.md: reports read ``metrics.jsonl``, never logs):
each run dir's ``config.json`` (stage, preset, resolved settings), ``metrics.jsonl`` (one JSON object per
logged step), ``model/model.safetensors`` (parameter count, read from the header alone) and any
``eval*.json`` written by ``fastgpt eval --out``. The report has: the pipeline at a glance (steps, tokens,
time and the headline metric of every stage), the hardware, the evaluation tables, then per run its
key settings, the first/last/best value of every metric it logged (so GRPO's held-out accuracy reads
"before -> after", DPO's margin and a reward model's accuracy appear when those stages logged them) and
a PNG of its curves (matplotlib, written next to the report under ``plots/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgpt import cli
from fastgpt.cli import HelpFormatter
from fastgpt.eval.cli import table as eval_table

__all__ = ["Run", "load_run", "main", "render_report"]

STAGE_ORDER = ("tokenizer", "pretrain", "sft", "reward", "grpo", "ppo", "dpo", "eval")
# logged bookkeeping, not results
BOOKKEEPING = {
    "step",
    "tokens",
    "elapsed_s",
    "lr",
    "tokens_per_sec",
    "mfu",
    "grad_norm",
    "skipped",
    "heldout_n",
    "heldout_pairs",
    "heldout_prompts",
    "rollouts_done",
}
# the metric that sums a stage up, in order of preference
HEADLINE = (
    "val_bpb",  # pretraining
    "val_loss",  # SFT
    "heldout_accuracy",  # GRPO (first -> last: before and after)
    "heldout_pair_accuracy",  # reward model
    "heldout_margin",  # DPO
    "heldout_reward",  # PPO
    "accuracy",
    "margin",
)
LOWER_IS_BETTER = re.compile(r"(loss|bpb|kl|perplexity|len)")
CONFIG_KEYS = (
    "preset",
    "init_from",
    "model",
    "data",
    "task",
    "max_steps",
    "time_budget_s",
    "batch_size",
    "seq_len",
    "grad_accum_resolved",
    "group_size",
    "prompts_per_step",
    "max_new_tokens",
    "beta",
    "optimizer",
    "lr",
    "schedule",
    "dtype",
    "device",
    "zero",
    "world_size",
    "seed",
)
PLOT_GROUPS = (
    ("loss", re.compile(r"(^|_)loss$")),
    ("bits per byte", re.compile(r"bpb")),
    ("reward", re.compile(r"reward(?!_errors)")),
    ("accuracy", re.compile(r"accuracy")),
    ("share of answers calling a tool", re.compile(r"tool_use$")),
    ("margin", re.compile(r"margin")),
    ("KL to reference", re.compile(r"^kl$")),
)


@dataclass
class Run:
    path: Path
    stage: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    bad_lines: int = 0
    parameters: int | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str) -> list[tuple[float, float]]:
        """``(step, value)`` of every record that logged ``key`` as a finite number."""
        out = []
        for i, r in enumerate(self.records):
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((float(r.get("step", i)), float(v)))
        return out

    def last(self, key: str) -> Any:
        for r in reversed(self.records):
            if key in r:
                return r[key]
        return None

    @property
    def metric_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for r in self.records:
            for k, v in r.items():
                if k not in BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys[k] = None
        return list(keys)


# --------------------------------------------------------------------------------------------- reading
def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a ``metrics.jsonl`` and how many lines were unreadable (a run killed mid-write)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    return records, bad


def safetensors_parameters(model_dir: Path) -> int | None:
    """Number of parameters in a model dir, from the safetensors headers (no tensor is read)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total


def read_evals(folder: Path) -> list[dict[str, Any]]:
    out = []
    for file in sorted(folder.glob("eval*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if isinstance(data, dict) and isinstance(data.get("results"), dict):
            out.append({**data, "file": str(file)})
    return out


def load_run(path: str | Path) -> Run:
    """A run dir: ``config.json`` and/or ``metrics.jsonl``, ``model/``, ``eval*.json``."""
    path = Path(path)
    config: dict[str, Any] = {}
    if (path / "config.json").is_file():
        try:
            loaded = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            config = {}
    records, bad = read_metrics(path / "metrics.jsonl")
    stage = str(config.get("stage") or path.name)
    params = safetensors_parameters(path / "model") if (path / "model").is_dir() else None
    return Run(path, stage, config, records, bad, params, read_evals(path))


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "config.json").is_file()


def read_timings(folder: Path) -> dict[str, dict[str, float]]:
    """``timings.jsonl`` of a pipeline dir (``{"stage", "wall_s", "load_5min"?}`` per line, as
    launch/speedrun.sh writes): the wall-clock time of every stage, data preparation and start-up
    included, and how busy the machine was."""
    records, _ = read_metrics(folder / "timings.jsonl")
    return {
        str(r["stage"]): {k: float(v) for k, v in r.items() if k != "stage" and isinstance(v, (int, float))}
        for r in records
        if "stage" in r and isinstance(r.get("wall_s"), (int, float))
    }


def discover(paths: list[str]) -> tuple[list[Run], list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Runs named directly, or the run dirs inside a pipeline dir; plus pipeline-level eval files and
    stage wall times."""
    runs, evals, timings = [], [], {}
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"--runs: {p} is not a directory")
        if is_run_dir(p):
            runs.append(load_run(p))
            continue
        children = [load_run(c) for c in sorted(p.iterdir()) if c.is_dir() and is_run_dir(c)]
        evals += read_evals(p)
        timings.update(read_timings(p))
        if not children and not evals:
            raise FileNotFoundError(
                f"--runs: {p} holds no run (no metrics.jsonl or config.json in it or below)"
            )
        rank = {s: i for i, s in enumerate(STAGE_ORDER)}
        runs += sorted(children, key=lambda r: (rank.get(r.stage, len(rank)), r.path.name))
    return runs, evals, timings


# --------------------------------------------------------------------------------------------- formatting
def fmt_value(key: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if "accuracy" in key or key.endswith("_frac"):
        return f"{v:.1%}"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{v:.4g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def fmt_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def headline(run: Run) -> str:
    for key in HEADLINE:
        series = run.series(key)
        if not series:
            continue
        first, last = series[0][1], series[-1][1]
        if not key.startswith("val_") and len(series) > 1:  # what RL and preference stages move
            return f"{key} {fmt_value(key, first)} → {fmt_value(key, last)}"
        return f"{key} {fmt_value(key, last)}"
    return "—"


def md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def hardware() -> list[str]:
    """The machine writing the report (the speedrun writes it on the machine that trained)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores"]
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        lines.append(f"memory: {mem_kb / 2**20:.0f} GiB")
    except (OSError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):  # other work on the machine slows every stage; say how busy it was
        lines.append(
            "load average when the report was written (1/5/15 min): "
            + " / ".join(f"{x:.1f}" for x in os.getloadavg())
        )
    try:
        import torch  # heavy: torch, loaded only when the command runs (--help starts without it)

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"GPUs: {len(gpus)} × {gpus[0]}" if gpus else "GPUs: none")
        lines.append(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    except ImportError:
        lines.append(f"Python {platform.python_version()}, {platform.system()}")
    return lines


# --------------------------------------------------------------------------------------------- plots
def _matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401 -- optional: matplotlib (pip install 'fastgpt[report]'), probed only
    except ImportError:
        return True
    return False


def plot_panels(run: Run) -> list[tuple[str, list[str]]]:
    """``(title, metric keys)`` of each panel :func:`plot_run` draws: a group of :data:`PLOT_GROUPS`
    with at least one key logged more than once. Phase timings (``time_*``) have their own table, not a
    panel, and the KL of a run without a reference model (``beta`` 0) is not plotted: it is 0 by
    construction, not a measurement."""
    panels = []
    for title, pattern in PLOT_GROUPS:
        keys = [
            k
            for k in run.metric_keys
            if pattern.search(k)
            and not k.startswith("time_")
            and not (k == "kl" and run.config.get("beta") == 0)
            and run.series(k)
        ]
        if keys and any(len(run.series(k)) > 1 for k in keys):
            panels.append((title, keys))
    return panels


def plot_run(run: Run, out_png: Path) -> bool:
    """One PNG with a panel per group of logged metrics (:func:`plot_panels`); False when the run
    logged nothing to plot or matplotlib is not installed (the report is then text only)."""
    panels = plot_panels(run)
    if not panels:
        return False
    try:
        import matplotlib  # heavy, optional: matplotlib (pip install 'fastgpt[report]')
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, optional: matplotlib (pip install 'fastgpt[report]')

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            xs, ys = zip(*run.series(key))
            sparse = len(xs) < 0.5 * len(run.records)  # eval metrics: mark the points
            ax.plot(xs, ys, marker="o" if sparse else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{run.stage} ({run.path.name})")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return True


# --------------------------------------------------------------------------------------------- report
TIME_SPLIT = ("time_rollout_s", "time_score_s", "time_reward_s", "time_logprobs_s", "time_update_s")


def time_split_section(runs: list[Run]) -> list[str]:
    """Markdown lines: for each RL run (one that logged ``time_rollout_s``), the median seconds per step
    of each phase (rollout, reward-model score, reward, log-probabilities, update) and the rollout's share.
    Empty when no run logged the split."""
    rows = [["stage", "steps", "rollout", "score", "reward", "logprobs", "update", "total", "rollout share"]]
    for run in runs:
        steps = [r for r in run.records if isinstance(r.get("time_rollout_s"), (int, float))]
        if not steps:
            continue
        medians = [
            statistics.median(r[k] for r in steps if isinstance(r.get(k), (int, float)))
            if any(isinstance(r.get(k), (int, float)) for r in steps)
            else None
            for k in TIME_SPLIT
        ]
        total = sum(m for m in medians if m is not None)
        cells = [f"{m:.2f} s" if m is not None else "—" for m in medians]
        share = f"{100 * medians[0] / total:.0f}%" if total > 0 else "—"
        rows.append([run.stage, str(len(steps)), *cells, f"{total:.2f} s", share])
    if len(rows) == 1:
        return []
    return [
        "",
        "## Where RL steps spend their time",
        "",
        md_table(rows),
        "",
        "Median seconds per logged step of each phase (`time_*_s` in metrics.jsonl): sampling the rollout, "
        "the reward model's forward (PPO), the reward (GRPO: the task's verifier; PPO: KL-shaped rewards "
        "and GAE), the old/reference log-probabilities, and the optimizer update. A rollout reused for "
        "several steps has its time spread over them.",
    ]


def render_report(
    runs: list[Run],
    evals: list[dict[str, Any]],
    out: Path,
    *,
    title: str,
    note: str | None,
    command: str,
    timings: dict[str, dict[str, float]] | None = None,
) -> str:
    """The Markdown text; plots are written under ``out.parent / "plots"``."""
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# {title}", "", f"Written {when} by `{command}`."]
    if note:
        md += ["", f"> {note}"]

    md += ["", "## Pipeline", ""]
    timings = timings or {}
    with_load = any("load_5min" in t for t in timings.values())

    def wall(stage: str) -> list[str]:
        t = timings.get(stage, {})
        cells = [fmt_duration(t.get("wall_s"))]
        return cells + ([f"{t['load_5min']:.1f}" if "load_5min" in t else "—"] if with_load else [])

    head = ["stage", "run", "steps", "tokens", "training time", "wall time"]
    rows = [head + (["machine load"] if with_load else []) + ["headline"]]
    total = 0.0
    by_stage = {run.stage: run for run in runs}
    # pipeline order: the order stages ran in (timings.jsonl), then runs it does not mention
    order = list(timings) + [run.stage for run in runs if run.stage not in timings]
    for name in order:
        run = by_stage.get(name)
        if run is None:  # a stage without a run dir: tokenizer, eval, ...
            rows.append([name, "", "", "", "", *wall(name), ""])
            continue
        elapsed = run.last("elapsed_s")
        total += elapsed or 0.0
        rel = os.path.relpath(run.path, out.parent)
        steps, tokens = fmt_value("step", run.last("step")), fmt_count(run.last("tokens"))
        rows.append([run.stage, f"`{rel}`", steps, tokens, fmt_duration(elapsed), *wall(name), headline(run)])
    wall_total = fmt_duration(sum(t.get("wall_s", 0.0) for t in timings.values())) if timings else "—"
    rows.append(
        ["**total**", "", "", "", f"**{fmt_duration(total)}**", f"**{wall_total}**"]
        + [""] * (len(rows[0]) - 6)
    )
    md.append(md_table(rows))
    md += [
        "",
        "Training time is each stage's own clock (`elapsed_s` in its metrics.jsonl: the training steps and "
        "evaluations); wall time (from `timings.jsonl`, when the pipeline wrote one) also counts start-up, "
        "data download and preparation, and saving."
        + (
            " Machine load is the 5-minute load average when the stage ended: above the number of cores, "
            "other work was competing for the CPU and every stage ran slower."
            if with_load
            else ""
        ),
    ]

    md += time_split_section(runs)

    md += ["", "## Hardware", ""]
    md += [f"- {line}" for line in hardware()]
    for run in runs:
        c = run.config
        bits = [f"{k}={c[k]}" for k in ("device", "dtype", "world_size", "zero") if k in c]
        if bits:
            md.append(f"- {run.stage}: {', '.join(bits)}")

    all_evals = evals + [e for run in runs for e in run.evals]
    if all_evals:
        md += ["", "## Evaluation", ""]
        for e in all_evals:
            md += [
                f"`{os.path.relpath(e['model'], out.parent) if 'model' in e else '?'}` (chat prompts: {e.get('chat')}):",
                "",
            ]
            md += [eval_table(e), ""]
        examples = [
            (k, ex) for e in all_evals for k, r in e["results"].items() for ex in r.get("examples", [])[:2]
        ]
        if examples:
            md += ["### Sample answers", ""]
            for key, ex in examples:
                mark = "✓" if ex.get("correct") else "✗"
                md += [
                    f"- **{key}** {mark} Q: {ex['question'].strip()[:300]!r}",
                    f"  A: {ex['completion'].strip()[:300]!r} (expected {ex['answer']!r})",
                ]

    md += ["", "## Runs"]
    for run in runs:
        md += ["", f"### {run.stage} — `{os.path.relpath(run.path, out.parent)}`", ""]
        settings = [
            [k, f"`{json.dumps(run.config[k])}`"]
            for k in CONFIG_KEYS
            if run.config.get(k) not in (None, "", {})
        ]
        mc = run.config.get("model_config")
        if isinstance(mc, dict):
            shape = ", ".join(
                f"{k}={mc[k]}"
                for k in ("family", "n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "max_seq_len")
                if k in mc
            )
            settings.append(["model", shape])
        if run.parameters:
            settings.append(["parameters", f"{run.parameters:,}"])
        if settings:
            md += [md_table([["setting", "value"], *settings]), ""]
        keys = run.metric_keys
        if keys:
            rows = [["metric", "first", "last", "best", "points"]]
            for k in keys:
                s = [v for _, v in run.series(k)]
                if not s:
                    continue
                best = min(s) if LOWER_IS_BETTER.search(k) else max(s)
                rows.append([k, fmt_value(k, s[0]), fmt_value(k, s[-1]), fmt_value(k, best), str(len(s))])
            md += [md_table(rows), ""]
        else:
            md += ["(no metrics logged)", ""]
        if run.bad_lines:
            md += [f"{run.bad_lines} unreadable line(s) in metrics.jsonl were skipped.", ""]
        png = out.parent / "plots" / f"{run.path.name}.png"
        if plot_run(run, png):
            md += [f"![{run.stage} curves]({os.path.relpath(png, out.parent)})", ""]
        elif run.metric_keys and _matplotlib_missing():
            md += ["(no plots: pip install 'fastgpt[report]' for matplotlib)", ""]
    return "\n".join(md).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="fastgpt report", description="Write a report card from run dirs.", formatter_class=HelpFormatter
    )
    p.add_argument("--runs", nargs="+", required=True, help="run dirs, or pipeline dirs holding run dirs")
    p.add_argument("--out", default=None, help="report file (default: report.md in the first --runs dir)")
    p.add_argument("--title", default="fastgpt report card", help="the heading of the report")
    p.add_argument("--note", default=None, help="a line shown under the title (e.g. which machine ran it)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        runs, evals, timings = discover(args.runs)
    except FileNotFoundError as e:
        print(f"fastgpt report: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "fastgpt report " + shlex.join(argv)  # quoted: the line can be run again as printed
    text = render_report(
        runs, evals, out.resolve(), title=args.title, note=args.note, command=command, timings=timings
    )
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"report written to {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
