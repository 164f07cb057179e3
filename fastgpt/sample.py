"""``fastgpt sample``: text continuations from a model dir (a pretraining run's ``out_dir/model``, any
fastgpt or Hugging Face GPT-2/Llama dir with tokenizer files).

    fastgpt sample --model out/pretrain/model --prompt "ROMEO:" --prompt "The king" -n 2 --max_tokens 100

Plain continuation, no chat template: each prompt is encoded with the BOS token in front (as pretraining
documents are) and continued by :class:`fastgpt.Engine` with temperature / top-k / top-p sampling.
A fixed ``--seed`` gives the same samples again.
"""

from __future__ import annotations

from pathlib import Path

from fastgpt import cli
from fastgpt.cli import HelpFormatter
from fastgpt.errors import UserError, report_user_error

__all__ = ["main", "sample"]


def sample(
    model_dir: str | Path,
    prompts: list[str],
    *,
    n: int = 1,
    max_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = 0,
    device: str | None = None,
) -> list[list[str]]:
    """``n`` continuations (text after the prompt) for each prompt."""
    import torch  # heavy: torch, loaded only when the command runs (--help starts without it)

    from fastgpt.engine import Engine  # heavy: loads torch; deferred until used
    from fastgpt.model import from_pretrained  # heavy: loads torch; deferred until used
    from fastgpt.model.sampling import check_sampling  # heavy: loads torch; deferred until used
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    model_dir = Path(model_dir)
    check_sampling(temperature, top_p=top_p)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(model_dir, device=device)
    tokenizer = Tokenizer.load(model_dir)
    engine = Engine(model, tokenizer)
    encoded = [tokenizer.encode(p, add_bos=tokenizer.bos_id is not None) for p in prompts]
    room = model.config.max_seq_len - max(len(ids) for ids in encoded)
    if room < 1:
        raise UserError(f"the longest prompt fills the model's context ({model.config.max_seq_len} tokens)")
    results = engine.generate(
        encoded,
        max_tokens=min(max_tokens, room),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        n=n,
        stop_ids=set() if tokenizer.bos_id is None else {tokenizer.bos_id},
    )
    return [[c.text for c in completions] for completions in results]


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="fastgpt sample", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="model dir (config.json + weights + tokenizer files)")
    p.add_argument(
        "--prompt", action="append", help="a prompt (repeat for several; default: one empty prompt)"
    )
    p.add_argument("-n", "--num_samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max_tokens", type=int, default=128, help="most new tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="0 disables")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling, in (0, 1]; default: off")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same samples")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    args = p.parse_args(argv)
    prompts = args.prompt or [""]
    try:
        out = sample(
            args.model,
            prompts,
            n=args.num_samples,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            seed=args.seed,
            device=args.device,
        )
    except (FileNotFoundError, UserError) as e:
        return report_user_error("sample", e)
    for prompt, texts in zip(prompts, out):
        for i, text in enumerate(texts):
            header = f"--- {prompt!r}" + (f" (sample {i + 1})" if len(texts) > 1 else "")
            print(f"{header}\n{prompt}{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
