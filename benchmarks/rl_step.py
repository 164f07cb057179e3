"""RL step speed: one GRPO step (rollout, reward, advantages, the clipped policy-gradient loss forward
and backward, optimizer step) through fastgpt's GRPO stage against the same step written directly on
transformers, on the same weights, prompts and settings.

    fastgpt convert-gguf --smollm2 --out models/smollm2
    OMP_NUM_THREADS=2 python benchmarks/rl_step.py --model models/smollm2     # 4 prompts x 8, 48 tokens
    python benchmarks/rl_step.py --tiny                                        # random tiny model, seconds
    OMP_NUM_THREADS=2 python benchmarks/rl_step.py --model models/smollm2 --trajectory 30 \
        --eval_every 10 --eval_problems 100 --json_out trajectory.json             # learning, not speed

The prompts are small +/- questions written to a temporary ``.jsonl`` task (``fastgpt.tasks``); both
sides see the same problems at each step.

- **fastgpt** runs :func:`fastgpt.grpo.step` on a :class:`fastgpt.grpo.GRPOStage` and a
  :class:`fastgpt.train.trainer.Trainer`, the code path of ``fastgpt grpo`` (lr 1e-5, constant
  schedule, no KL term, one update per rollout, ``--dtype=auto``), and reports the step's time split
  (``time_rollout_s``, ``time_reward_s``, ``time_logprobs_s``, ``time_update_s``).
- **transformers** is the plain loop one writes on ``LlamaForCausalLM``: ``generate`` with sampling
  (temperature 1, ``num_return_sequences=G`` on the left-padded prompts, stop at the chat format's stop
  tokens), the same reward and group-normalised advantages, one forward of the prompt + completion rows
  (logits only over the completion, ``logits_to_keep``), the clipped ratio loss averaged over completion
  tokens, backward, gradient clipping at 1.0 and ``torch.optim.AdamW`` (lr, betas 0.9/0.95, no decay:
  fastgpt's settings). ``--hf_dtype``: ``fp32``, or ``bf16`` autocast for the loss forward/backward;
  ``auto`` (default) is the dtype fastgpt's ``--dtype=auto`` picks on this device (fp32 on a CPU
  without native bf16, where oneDNN emulates bf16 matmuls), so both sides compute in the same dtype.

Each side trains its own copy of the model. One untimed warm-up step each, then ``--repeats``
interleaved rounds (fastgpt, transformers, fastgpt, ...); medians of wall seconds per step, their ratio,
fastgpt's median time split, and each side's rollout tokens per second (sampled tokens, up to and
including the stop token, over the generation's wall time).

``--trajectory N`` measures what each side learns instead of how fast: from the same starting weights,
each side trains its own copy for N steps on the same prompt sequence (no warm-up step), and after
steps 0, ``--eval_every``, ... and N one common evaluator scores both: each side's current weights are
copied into one separate fastgpt model (fastgpt's through its state dict, transformers' through the
Hugging Face loader's name mapping, checked by comparing that model's logits with the source model's on
a probe prompt) whose greedy answers (the inference engine, ``--max_new_tokens``, the training dtype)
to ``--eval_problems`` held-out questions (one batch) are checked by the task's verifier. The held-out questions are
written like the training ones from another seed, keeping only questions that are not in the training
file. Per step it records each side's mean sampled reward, share of correct samples and wall seconds
(contended on a shared machine: not a speed measurement); it prints a table and, with ``--json_out``,
writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as ``python benchmarks/rl_step.py``, this folder is first on sys.path and its kernels.py would
# shadow Hugging Face's ``kernels`` package that transformers imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import torch  # noqa: E402

SPLIT_KEYS = ("time_rollout_s", "time_reward_s", "time_logprobs_s", "time_update_s")


def _questions(seed: int):
    """Endless small addition/subtraction questions ``(prompt, answer)`` from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        a, b = torch.randint(1, 20, (2,), generator=gen).tolist()
        op = "+" if torch.rand(1, generator=gen).item() < 0.5 else "-"
        answer = a + b if op == "+" else a - b
        yield f"What is {a} {op} {b}? Answer with the number.", str(answer)


def write_task(path: Path, n: int, seed: int, exclude: set[str] = frozenset()) -> Path:
    """``n`` small addition/subtraction questions as a jsonl task. With ``exclude`` (prompts), ``n``
    distinct questions none of which is in ``exclude`` (a held-out set disjoint from a training file)."""
    seen = set(exclude)
    with open(path, "w") as f:
        written = 0
        for prompt, answer in _questions(seed):
            if exclude:
                if prompt in seen:
                    continue
                seen.add(prompt)
            f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
            written += 1
            if written == n:
                break
    return path


def _prompts(path: Path) -> set[str]:
    with open(path) as f:
        return {json.loads(line)["prompt"] for line in f if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2", help="model dir (fastgpt / Hugging Face layout)")
    parser.add_argument("--tiny", action="store_true", help="a random tiny model instead of --model")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--hf_dtype", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--trajectory", type=int, default=0, help="train N steps per side, evaluate both")
    parser.add_argument("--eval_every", type=int, default=10, help="--trajectory: steps between evaluations")
    parser.add_argument("--eval_problems", type=int, default=100, help="--trajectory: held-out questions")
    parser.add_argument("--json_out", default="", help="--trajectory: write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.trajectory < 0 or args.eval_every < 1 or args.eval_problems < 1:
        parser.error("--trajectory must be >= 0, --eval_every and --eval_problems >= 1")

    from transformers import LlamaForCausalLM

    from fastgpt import grpo
    from fastgpt.rl.common import load_start
    from fastgpt.train.config import parse_args
    from fastgpt.train.trainer import Trainer, resolve_dtype

    tmp = Path(tempfile.mkdtemp(prefix="rl_step_"))
    if args.tiny:
        from fastgpt.rl.toy import tiny_model_dir

        model_dir = tiny_model_dir(tmp / "model")
    else:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").is_file():
            print(
                f"error: --model={model_dir}: no config.json (fastgpt convert-gguf --smollm2 --out {model_dir})"
            )
            return 2
    task_path = write_task(tmp / "task.jsonl", 200, args.seed)
    G, rows = args.group_size, args.prompts * args.group_size

    # ---- fastgpt: the GRPO stage and the training loop, built as `fastgpt grpo` builds them
    flags = {
        "init_from": model_dir, "task": task_path, "prompts_per_step": args.prompts, "group_size": G,
        "max_new_tokens": args.max_new_tokens, "lr": args.lr, "min_lr": args.lr, "seed": args.seed,
        "out_dir": tmp / "grpo", "max_steps": 10**6, "eval_every": 0, "log_every": 10**6,
        "progress": "false", "resume": "never",
    }  # fmt: skip
    cfg = parse_args(grpo.GRPOConfig, [f"--{k}={v}" for k, v in flags.items()])
    policy, tokenizer, fmt = load_start(str(model_dir), stage="rl_step")
    task = grpo.build_task(cfg)
    dtype = resolve_dtype(cfg.dtype, torch.device("cpu"))
    stage = grpo.GRPOStage(
        policy, tokenizer, task, cfg, chat_format=fmt, autocast_dtype=dtype, log=lambda *_: None
    )
    trainer = Trainer(
        cfg, policy, tokenizer=tokenizer, stage_name="grpo", micro_batch_size=stage.micro_rows,
        grad_accum=stage.grad_accum,
    )  # fmt: skip
    trainer.begin(stage)
    splits: list[dict[str, float]] = []
    sampled: dict[str, dict[str, float]] = {}  # each side's last rollout: mean reward, share correct

    def run_fastgpt() -> tuple[float, float, int]:
        t = time.perf_counter()
        m = grpo.step(stage, trainer)
        elapsed = time.perf_counter() - t
        splits.append({k: m[k] for k in SPLIT_KEYS})
        sampled["fastgpt"] = {"reward_mean": m["reward_mean"], "sample_accuracy": m["accuracy"]}
        return elapsed, m["time_rollout_s"], int(round(m["completion_len"] * rows))

    # ---- transformers: the plain loop on LlamaForCausalLM, same problems in the same order
    hf_dtype = {"auto": dtype, "fp32": torch.float32, "bf16": torch.bfloat16}[args.hf_dtype]
    hf = LlamaForCausalLM.from_pretrained(str(model_dir))
    optimizer = torch.optim.AdamW(hf.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    hf_problems = task.train_stream(seed=cfg.seed)
    stops = sorted(fmt.stop_ids)
    hf_steps = [0]

    def run_transformers() -> tuple[float, float, int]:
        problems = [next(hf_problems) for _ in range(args.prompts)]
        prompts = [fmt.render_prompt(list(p.messages)) for p in problems]
        longest = max(map(len, prompts))
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p) :], mask[i, longest - len(p) :] = torch.tensor(p), 1
        torch.manual_seed(args.seed * 1000 + hf_steps[0])
        hf_steps[0] += 1
        t = time.perf_counter()
        hf.eval()
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                num_return_sequences=G, max_new_tokens=args.max_new_tokens, eos_token_id=stops,
                pad_token_id=0,
            )  # fmt: skip
        t_rollout = time.perf_counter() - t
        completions = out[:, longest:]  # (N*G, W)
        width = completions.size(1)
        comp_mask = torch.zeros_like(completions)
        rewards, correct = [], []
        for r, row in enumerate(completions.tolist()):  # up to and including the first stop token
            n = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
            comp_mask[r, :n] = 1
            text = tokenizer.decode(row[: n - 1] if row[n - 1] in stops else row[:n])
            reward = stage.reward(text, problems[r // G], n)
            rewards.append(float(reward.total))
            correct.append(float(reward.correct))
        sampled["transformers"] = {
            "reward_mean": statistics.fmean(rewards),
            "sample_accuracy": statistics.fmean(correct),
        }
        grouped = torch.tensor(rewards).view(-1, G)
        adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
        attention = torch.cat([mask.repeat_interleave(G, dim=0), comp_mask], dim=1)
        positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: count from the prompt's start
        hf.train()
        with torch.autocast("cpu", dtype=hf_dtype, enabled=hf_dtype != torch.float32):
            logits = hf(
                input_ids=out, attention_mask=attention, position_ids=positions, logits_to_keep=width + 1
            ).logits[:, :-1]  # position t predicts completion token t
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, completions[..., None]).squeeze(2)
        ratio = torch.exp(logp - logp.detach())  # 1 on-policy, with the policy gradient as its derivative
        a = adv.reshape(-1, 1)
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_low) * a)
        weight = comp_mask.float()
        loss = -(surrogate * weight).sum() / weight.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t, t_rollout, int(comp_mask.sum())

    sides = {"fastgpt": run_fastgpt, "transformers": run_transformers}
    if args.trajectory:
        heldout_path = write_task(
            tmp / "heldout.jsonl", args.eval_problems, args.seed + 1, exclude=_prompts(task_path)
        )
        models = {"fastgpt": policy, "transformers": hf}
        return trajectory(args, sides, sampled, models, model_dir, heldout_path, tokenizer, fmt, dtype)
    times: dict[str, list[float]] = {k: [] for k in sides}
    rollout_s: dict[str, list[float]] = {k: [] for k in sides}
    tokens: dict[str, list[int]] = {k: [] for k in sides}
    loads = [_load()]
    for fn in sides.values():  # warm-up (allocator, oneDNN primitives, optimizer state), not timed
        fn()
    splits.clear()
    for step in range(args.repeats):
        for name, fn in sides.items():
            seconds, gen_s, n = fn()
            times[name].append(seconds)
            rollout_s[name].append(gen_s)
            tokens[name].append(n)
            loads.append(_load())
            print(
                f"round {step} {name}: {seconds:.2f}s per step (rollout {gen_s:.2f}s, {n} tokens, "
                f"{n / gen_s:.0f} tok/s), load {loads[-1]:.2f}",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"GRPO step of {args.prompts} prompts x {G} samples ({rows} rows), <= {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads, fastgpt dtype {str(dtype).removeprefix('torch.')}, transformers "
        f"dtype {str(hf_dtype).removeprefix('torch.')}, load average {min(loads):.2f}-{max(loads):.2f}"
    )
    for k in sides:
        rate = sum(tokens[k]) / sum(rollout_s[k])
        print(
            f"{k}: median {med[k]:.2f}s per step, rollout median {statistics.median(rollout_s[k]):.2f}s, "
            f"{rate:.0f} rollout tok/s at batch {rows}"
        )
    split = {k: statistics.median(s[k] for s in splits) for k in SPLIT_KEYS}
    print("fastgpt split (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
    print(f"step ratio (transformers s / fastgpt s): {med['transformers'] / med['fastgpt']:.2f}x")
    return 0


def trajectory(args, sides, sampled, models, model_dir, heldout_path, tokenizer, fmt, dtype) -> int:
    """``--trajectory``: train both sides step by step (fastgpt, then transformers) and score both with
    one evaluator after step 0, every ``--eval_every`` steps and the last step (module docstring)."""
    from fastgpt.model.hf import load_hf_weights
    from fastgpt.model.load import from_pretrained
    from fastgpt.rl.rollout import greedy_accuracy, make_rollout_engine
    from fastgpt.tasks.jsonl import JsonlTask
    from fastgpt.train.trainer import autocast_context

    heldout_task = JsonlTask(heldout_path, heldout_fraction=0.0)
    problems = heldout_task.split("train")  # every question of the held-out file
    judge = from_pretrained(str(model_dir)).eval().requires_grad_(False)
    probe = torch.tensor([fmt.render_prompt(list(problems[0].messages))])

    @torch.no_grad()
    def evaluate(name: str) -> dict[str, float]:
        source = models[name]
        if name == "fastgpt":
            judge.load_state_dict(source.state_dict())
        else:  # Hugging Face names -> fastgpt's (fused qkv and gate/up), as for a checkpoint on disk
            load_hf_weights(judge, source.state_dict(), "transformers LlamaForCausalLM")
        was_training = source.training
        source.eval()
        want = source(probe)
        want = (want.logits if hasattr(want, "logits") else want).float()
        source.train(was_training)
        logit_diff = float((judge(probe).float() - want).abs().max())
        engine = make_rollout_engine(judge, tokenizer, chat_format=fmt)
        t = time.perf_counter()
        with autocast_context(torch.device("cpu"), dtype):
            acc, _ = greedy_accuracy(  # one batch: cheaper per token than several small ones on CPU
                engine, heldout_task, problems, max_new_tokens=args.max_new_tokens, batch_size=len(problems)
            )
        return {"accuracy": acc, "logit_max_abs_diff": logit_diff, "seconds": time.perf_counter() - t}

    evals: list[dict] = []
    steps: list[dict] = []

    def evaluate_both(step: int) -> None:
        row = {"step": step, **{name: evaluate(name) for name in sides}}
        evals.append(row)
        print(
            f"eval after step {step}: held-out greedy accuracy fastgpt {row['fastgpt']['accuracy']:.3f}, "
            f"transformers {row['transformers']['accuracy']:.3f} (n={len(problems)}; judge logits vs source: "
            f"max |diff| {row['fastgpt']['logit_max_abs_diff']:.1e} / "
            f"{row['transformers']['logit_max_abs_diff']:.1e})",
            flush=True,
        )

    evaluate_both(0)
    for step in range(1, args.trajectory + 1):
        row: dict = {"step": step}
        for name, fn in sides.items():
            seconds, _, _ = fn()
            row[name] = {**sampled[name], "seconds": seconds}
        row["load"] = _load()
        steps.append(row)
        print(
            f"step {step}: sampled reward fastgpt {row['fastgpt']['reward_mean']:.3f}, transformers "
            f"{row['transformers']['reward_mean']:.3f}; {row['fastgpt']['seconds']:.1f}s / "
            f"{row['transformers']['seconds']:.1f}s (contended), load {row['load']:.2f}",
            flush=True,
        )
        if step % args.eval_every == 0 or step == args.trajectory:
            evaluate_both(step)

    def window_reward(name: str, lo: int, hi: int) -> float:
        values = [r[name]["reward_mean"] for r in steps if lo < r["step"] <= hi]
        return statistics.fmean(values) if values else float("nan")

    loads = [r["load"] for r in steps]
    print(
        f"GRPO trajectory: {args.trajectory} steps of {args.prompts} prompts x {args.group_size} samples, "
        f"<= {args.max_new_tokens} new tokens, lr {args.lr}, seed {args.seed}, {torch.get_num_threads()} "
        f"threads, held-out n={len(problems)} (greedy), load average {min(loads):.2f}-{max(loads):.2f}"
    )
    print(
        "step | held-out acc fastgpt | held-out acc transformers | mean sampled reward since last eval (f / t)"
    )
    previous = 0
    for e in evals:
        s = e["step"]
        rewards = (
            f"{window_reward('fastgpt', previous, s):.3f} / {window_reward('transformers', previous, s):.3f}"
            if s
            else "-"
        )
        print(f"{s:4d} | {e['fastgpt']['accuracy']:.3f} | {e['transformers']['accuracy']:.3f} | {rewards}")
        previous = s
    if args.json_out:
        result = {
            "config": {
                "model": "tiny" if args.tiny else str(model_dir), "steps": args.trajectory,
                "prompts": args.prompts, "group_size": args.group_size,
                "max_new_tokens": args.max_new_tokens, "lr": args.lr, "seed": args.seed,
                "eval_every": args.eval_every, "eval_problems": len(problems),
                "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
            },
            "evals": evals,
            "steps": steps,
        }  # fmt: skip
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def _load() -> float:
    """The 1-minute load average (other processes sharing the cores)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


if __name__ == "__main__":
    raise SystemExit(main())
