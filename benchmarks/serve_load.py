"""Serving throughput under concurrent load: the batching scheduler against one request at a time.

    python benchmarks/serve_load.py                          # tiny preset, random weights, CPU
    python benchmarks/serve_load.py --model out/sft/model --concurrency 1,4,8,16

Starts the OpenAI-compatible server in this process on a free port and sends ``--requests`` chat
requests through the official ``openai`` async client with at most C in flight, for each C of
``--concurrency``. Every request asks for ``--max_tokens`` tokens; throughput counts the tokens the
server reports in ``usage`` (a reply may stop early). Reports generated tokens per second, mean and p90 latency, and how many engine batches the
scheduler ran; the speed-up column is throughput relative to C=1 in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch


def build_engine(args):
    from fastgpt.engine import Engine
    from fastgpt.model import GPT, GPTConfig

    if args.model:
        from fastgpt.serve.server import load_engine

        return load_engine(args.model, "cpu")
    from fastgpt.tokenizer import Tokenizer

    text = "The quick brown fox jumps over the lazy dog. What is 12 times 7? It is 84. " * 200
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)
    return Engine(GPT(config).eval(), tokenizer)


async def run_level(url: str, name: str, concurrency: int, requests: int, max_tokens: int):
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens = [], []

    async def one(i: int):
        async with gate:
            t0 = time.perf_counter()
            r = await client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": f"Tell me a story number {i}."}],
                max_tokens=max_tokens,
                temperature=1.0,
            )
            latencies.append(time.perf_counter() - t0)
            tokens.append(r.usage.completion_tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - t0
    await client.close()
    latencies.sort()
    return {
        "tokens_per_s": sum(tokens) / wall,
        "mean_latency_s": statistics.mean(latencies),
        "p90_latency_s": latencies[int(0.9 * (len(latencies) - 1))],
        "wall_s": wall,
        "tokens": sum(tokens),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model dir (default: tiny preset, random weights)")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from fastgpt.serve.background import serve_in_thread
    from fastgpt.serve.protocol import Limits
    from fastgpt.serve.server import ServeConfig, create_app

    engine = build_engine(args)
    levels = [int(c) for c in args.concurrency.split(",")]
    config = ServeConfig(
        model_name="bench",
        limits=Limits(max_tokens=args.max_tokens, max_n=1),
        max_batch_rows=max(levels),
        max_queue=args.requests,
    )
    app = create_app(engine, config)
    params = sum(p.numel() for p in engine.model.parameters())
    print(
        f"model: {params / 1e6:.2f}M parameters, {args.requests} requests x {args.max_tokens} tokens, {args.threads} threads"
    )
    rows = []
    with serve_in_thread(app) as url:
        asyncio.run(run_level(url, "bench", 1, 2, 4))  # warm-up
        for c in levels:
            before = dict(app.state.scheduler.stats)
            result = asyncio.run(run_level(url, "bench", c, args.requests, args.max_tokens))
            result["batches"] = app.state.scheduler.stats["batches"] - before["batches"]
            rows.append((c, result))
    base = rows[0][1]["tokens_per_s"]
    print("| concurrency | tokens/s | speed-up | mean latency | p90 latency | engine batches |")
    print("|---|---|---|---|---|---|")
    for c, r in rows:
        print(
            f"| {c} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {r['mean_latency_s']:.2f} s | "
            f"{r['p90_latency_s']:.2f} s | {r['batches']} |"
        )


if __name__ == "__main__":
    main()
