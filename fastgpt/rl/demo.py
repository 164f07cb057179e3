"""Set-up for the GRPO demonstration on a CPU: a tiny model taught, by brief SFT, to answer arithmetic
problems with the calculator -- well enough to solve some held-out problems, not all.

    python -m fastgpt.rl.demo --out=out/rl-demo            # writes out/rl-demo/{sft.jsonl, init/}
    python -m fastgpt.sft  --model=out/rl-demo/init --data=out/rl-demo/sft.jsonl ...
    python -m fastgpt.grpo --model=out/rl-demo/sft/model --task=chain_sum --tools=true ...

(docs/rl.md has the exact commands and the measured result.) Why this set-up: a 135M model needs
minutes per GRPO step on two shared CPU cores, while a ~1M-parameter model takes about a second. A
tiny model cannot learn arithmetic in minutes, but it can learn to *use the calculator*: copy the
expression from the question into a calculator call, then copy the result after ``####``.

The SFT conversations show two correct behaviours on the training problems: half answer through the
calculator, half answer directly (``--direct_fraction``). After brief SFT the model does both; its
direct answers to *held-out* problems are mostly wrong (it has not learned arithmetic), its calculator
answers mostly right. That is the situation RL is for: the model can already solve some problems, and
the reward tells it which of its own behaviours pays off. GRPO should move it to the calculator, and
held-out accuracy should rise.

What is written:

- ``sft.jsonl``: one conversation per distinct *training* problem of the task (the held-out split is
  never used), answered through the calculator or directly (the conversations of the ``task_practice``
  SFT set, which gives the speedrun's GRPO stage the same cold start);
- ``init/``: a fresh tiny llama-family model with a BPE tokenizer trained on those conversations' text
  (fastgpt's chat special tokens included).
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import torch

from fastgpt.cli import ArgumentParser
from fastgpt.model import GPT, GPTConfig
from fastgpt.sft_data.task_practice import practice_conversation as sft_conversation
from fastgpt.tasks import get_task
from fastgpt.tokenizer import Tokenizer

__all__ = ["main", "sft_conversation"]

DEFAULT_OPTIONS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m fastgpt.rl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/rl-demo", help="output dir (tokenizer, SFT data, model)")
    parser.add_argument("--task", default="chain_sum")
    parser.add_argument("--task_options", default=json.dumps(DEFAULT_OPTIONS))
    parser.add_argument("--task_seed", type=int, default=0)
    parser.add_argument(
        "--n_train", type=int, default=2500, help="distinct training problems written as SFT conversations"
    )
    parser.add_argument(
        "--direct_fraction",
        type=float,
        default=0.5,
        help="share of SFT conversations that answer directly, without the calculator",
    )
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=128)
    parser.add_argument("--max_seq_len", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(args.task, seed=args.task_seed, **json.loads(args.task_options))
    problems = task.split("train", args.n_train)
    rng = random.Random(args.seed)
    conversations = [
        sft_conversation(p, use_calculator=rng.random() >= args.direct_fraction) for p in problems
    ]
    tmp = out / ".sft.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}) + "\n")
    tmp.replace(out / "sft.jsonl")

    texts = [m["content"] for c in conversations for m in c if m["content"]]
    texts += [
        m["tool_calls"][0]["function"]["arguments"]["expression"]
        for c in conversations
        for m in c
        if m.get("tool_calls")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small corpus may support fewer merges than asked for
        tokenizer = Tokenizer.train(texts, vocab_size=args.vocab_size)
    torch.manual_seed(args.seed)
    config = GPTConfig.from_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        n_layer=args.n_layer,
        n_head=4,
        n_kv_head=4,
        n_embd=args.n_embd,
        max_seq_len=args.max_seq_len,
    )
    model = GPT(config)
    model.save_pretrained(out / "init")
    tokenizer.save(out / "init")
    print(
        f"wrote {len(conversations)} SFT conversations to {out / 'sft.jsonl'} and a "
        f"{model.num_params() / 1e6:.2f}M-parameter model to {out / 'init'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
