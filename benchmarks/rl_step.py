"""RL rollout speed: fastgpt's rollout (``make_rollout_engine`` + ``sample_rollout``, the GRPO code path)
against transformers' sampling ``generate`` on the same weights and prompts.

    fastgpt convert-gguf --smollm2 --out models/smollm2
    OMP_NUM_THREADS=2 python benchmarks/rl_step.py --model models/smollm2     # 4 prompts x 8, 48 tokens
    python benchmarks/rl_step.py --tiny                                        # random tiny model, seconds

The prompts are small +/- questions written to a temporary ``.jsonl`` task (``fastgpt.tasks``); both
sides sample ``group_size`` completions of each prompt at temperature 1 with at most ``max_new_tokens``
new tokens and stop at the chat format's stop tokens. fastgpt generates the whole rollout in one batch
(each prompt prefilled once); transformers runs ``generate(do_sample=True, num_return_sequences=G)`` on
the left-padded batch of prompts. The two alternate for ``--repeats`` rounds; medians of wall seconds.

This is the rollout half of the GRPO step the issue asks to compare; the full step (loss
forward/backward and optimizer step on both sides) is not measured here yet.
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


def write_task(path: Path, n: int, seed: int) -> Path:
    """``n`` small addition/subtraction questions as a jsonl task."""
    gen = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = torch.randint(1, 20, (2,), generator=gen).tolist()
            op = "+" if torch.rand(1, generator=gen).item() < 0.5 else "-"
            answer = a + b if op == "+" else a - b
            f.write(
                json.dumps(
                    {"prompt": f"What is {a} {op} {b}? Answer with the number.", "answer": str(answer)}
                )
                + "\n"
            )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2", help="model dir (fastgpt / Hugging Face layout)")
    parser.add_argument("--tiny", action="store_true", help="a random tiny model instead of --model")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import LlamaForCausalLM

    from fastgpt.rl.common import load_start
    from fastgpt.rl.rollout import make_rollout_engine, sample_rollout
    from fastgpt.tasks import RewardConfig, TaskReward, get_task

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
    policy, tokenizer, fmt = load_start(str(model_dir), stage="rl_step")
    policy.eval()
    task = get_task(str(write_task(tmp / "task.jsonl", 200, args.seed)), heldout_fraction=0.1)
    problems = task.split("train", args.prompts)
    reward = TaskReward(task, RewardConfig(max_tokens=args.max_new_tokens), log=lambda *_: None)
    engine = make_rollout_engine(policy, tokenizer, chat_format=fmt)
    hf = LlamaForCausalLM.from_pretrained(str(model_dir)).eval()

    prompts = [fmt.render_prompt(list(p.messages)) for p in problems]
    longest = max(map(len, prompts))
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :], mask[i, longest - len(p) :] = torch.tensor(p), 1
    stops = sorted(fmt.stop_ids)

    def run_fastgpt(step: int) -> tuple[float, int]:
        t = time.perf_counter()
        rollout = sample_rollout(
            engine, problems, reward, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
            step=step, seed=args.seed,
        )  # fmt: skip
        return time.perf_counter() - t, int(rollout.completion_lens.sum())

    def run_transformers(step: int) -> tuple[float, int]:
        torch.manual_seed(args.seed * 1000 + step)
        t = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                num_return_sequences=args.group_size, max_new_tokens=args.max_new_tokens,
                eos_token_id=stops, pad_token_id=0,
            )  # fmt: skip
        elapsed = time.perf_counter() - t
        new = out[:, longest:]
        n_tokens = 0
        for row in new.tolist():  # up to and including the first stop token
            n_tokens += next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
        return elapsed, n_tokens

    times: dict[str, list[float]] = {"fastgpt": [], "transformers": []}
    tokens: dict[str, list[int]] = {"fastgpt": [], "transformers": []}
    run_fastgpt(-1), run_transformers(-1)  # warm-up (allocator, oneDNN primitives), not timed
    for step in range(args.repeats):
        for name, fn in (("fastgpt", run_fastgpt), ("transformers", run_transformers)):
            seconds, n = fn(step)
            times[name].append(seconds)
            tokens[name].append(n)
            print(f"round {step} {name}: {seconds:.2f}s, {n} tokens, {n / seconds:.0f} tok/s", flush=True)
    rows = args.prompts * args.group_size
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: sum(tokens[k]) / sum(times[k]) for k in times}
    print(
        f"rollout of {args.prompts} prompts x {args.group_size} samples ({rows} rows), <= {args.max_new_tokens} "
        f"new tokens, {torch.get_num_threads()} threads, load {open('/proc/loadavg').read().split()[0]}"
    )
    for k in times:
        print(f"{k}: median {med[k]:.2f}s per rollout, {rate[k]:.0f} sampled tok/s")
    print(f"rollout ratio (transformers s / fastgpt s): {med['transformers'] / med['fastgpt']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
