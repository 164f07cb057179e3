"""Generation speed: fastgpt's Engine vs transformers' ``generate`` (KV cache) on the same weights.

    python benchmarks/generate.py                       # the `tiny` preset (the default model), CPU
    python benchmarks/generate.py --clock cpu --threads 1 --compile off default max-autotune
    python benchmarks/generate.py --preset smollm2-135m --batch_sizes 1 8 --new_tokens 64

One randomly initialised fastgpt model is saved in the Hugging Face layout and loaded by transformers,
so both sides run identical weights (checked: the greedy tokens must agree). Both decode greedily, never
stop early, and are timed the same way in the same process, alternating repeats:

- TTFT (time to first token) = time of a call that generates 1 token (prefill + one sample);
- decode tok/s = ``(new_tokens - 1) * batch / (time(new_tokens) - time(1))``, i.e. the steady-state
  rate of decode steps after the prefill.

``--compile`` lists the fastgpt engines to time: eager (``off``: ``fastgpt``) and/or
``Engine(compile=MODE)`` (``fastgpt-compile-MODE``). A compiled engine compiles its decode step on its
first call, before any timing; that wall time is reported apart as ``compile_s`` and is not in the
rates.

Medians over ``--repeats`` (the implementations interleaved); ``--clock=cpu`` times CPU seconds of
the process instead of wall seconds, for machines shared with other jobs. One CSV row per
(implementation, batch size) on stdout, or into ``--csv``; the ratios to transformers on stderr.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time

import torch

# Run as ``python benchmarks/<script>.py``, this folder is first on sys.path, and its kernels.py (the
# kernel benchmark) would shadow Hugging Face's ``kernels`` package, which transformers imports when
# installed ("cannot import name 'CUDAProperties' from 'kernels'"). Nothing here imports a sibling.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _clock(name: str):
    """``wall``: elapsed time; ``cpu``: CPU time of this process (all its threads), which a machine
    shared with other jobs inflates far less than wall time."""
    return time.perf_counter if name == "wall" else time.process_time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument(
        "--family", default="llama", help="llama | gpt2 (transformers LlamaForCausalLM / GPT2LMHeadModel)"
    )
    p.add_argument(
        "--overrides", default="", help="model overrides, e.g. n_layer=6,n_embd=384,vocab_size=8192"
    )
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument(
        "--compile",
        nargs="+",
        choices=["off", "default", "max-autotune"],
        default=["off", "max-autotune"],
        help="fastgpt engines to time side by side: eager (off) and/or Engine(compile=MODE)",
    )
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from fastgpt.engine import Engine
    from fastgpt.model import GPT, GPTConfig, from_pretrained

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {}
    for item in filter(None, args.overrides.split(",")):
        key, value = item.split("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    config = GPTConfig.from_preset(args.preset, family=args.family, **overrides)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        GPT(config).save_pretrained(tmp)
        ours = from_pretrained(tmp, dtype=dtype).eval()
        theirs = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).eval()
    n_params = sum(p.numel() for p in ours.parameters())
    engines = {}  # implementation name -> Engine
    for mode in dict.fromkeys(args.compile):
        name = "fastgpt" if mode == "off" else f"fastgpt-compile-{mode}"
        engines[name] = Engine(ours, tokenizer=None, chat_format=None, compile=mode != "off" and mode)
    vocab = config.vocab_size

    rows = []
    for batch in args.batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(0, vocab, (batch, args.prompt_len), generator=gen)
        attention_mask = torch.ones_like(prompts)

        def ours_fn(engine, prompt_ids: list[list[int]]):
            def run(new_tokens: int):
                return engine.generate(prompt_ids, max_tokens=new_tokens, temperature=0, stop_ids=set())

            return run

        def run_theirs(n: int, prompts=prompts, attention_mask=attention_mask):
            with torch.inference_mode():
                return theirs.generate(
                    prompts,
                    attention_mask=attention_mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                    eos_token_id=None,
                )

        runners = {name: ours_fn(engine, prompts.tolist()) for name, engine in engines.items()}
        runners["transformers"] = run_theirs
        # same weights -> same greedy tokens (a few late flips are possible from float summation order);
        # the first call of a compiled engine compiles its decode step (wall time kept apart)
        reference = run_theirs(args.new_tokens)[:, args.prompt_len :].tolist()
        agree, compile_s = {"transformers": 1.0}, {}
        for name, engine in engines.items():
            before = engine.compile_seconds
            tokens = [c[0].tokens for c in runners[name](args.new_tokens)]
            compile_s[name] = engine.compile_seconds - before
            same = sum(x == y for ra, rb in zip(tokens, reference) for x, y in zip(ra, rb))
            agree[name] = same / (args.new_tokens * batch)
        for fn in runners.values():
            fn(2)  # warm up
        clock = _clock(args.clock)
        samples = {(name, n): [] for name in runners for n in (1, args.new_tokens)}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
            for name, fn in runners.items():
                for n in (1, args.new_tokens):
                    start = clock()
                    fn(n)
                    samples[(name, n)].append(clock() - start)
        timings = {name: {} for name in runners}
        for (name, n), values in samples.items():
            timings[name][n] = statistics.median(values)
        for name, t in timings.items():
            decode = (args.new_tokens - 1) * batch / max(t[args.new_tokens] - t[1], 1e-9)
            rows.append(
                {
                    "impl": name,
                    "batch": batch,
                    "params_M": round(n_params / 1e6, 1),
                    "dtype": args.dtype,
                    "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens,
                    "clock": args.clock,
                    "ttft_ms": round(t[1] * 1e3, 1),
                    "decode_tok_s": round(decode, 1),
                    "compile_s": round(compile_s.get(name, 0.0), 1),
                    "greedy_agreement": round(agree[name], 3),
                }
            )
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    by = {(r["impl"], r["batch"]): r for r in rows}
    for batch in args.batch_sizes:
        t = by[("transformers", batch)]
        for name in engines:
            f = by[(name, batch)]
            print(
                f"# batch {batch}: {name} decode {f['decode_tok_s'] / t['decode_tok_s']:.2f}x transformers, "
                f"TTFT {t['ttft_ms'] / f['ttft_ms']:.2f}x faster",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
