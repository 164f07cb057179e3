"""The repository's ``kernels/`` folder is ``fastgpt.kernels``; Python started in the repository root
must still see Hugging Face's ``kernels`` package (transformers imports it) under that name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_in_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_fastgpt_kernels_is_the_repository_folder():
    import fastgpt.kernels

    assert Path(fastgpt.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"


def test_transformers_imports_in_the_repository_root():
    # `python -c` puts the current directory first on sys.path, where kernels/ would shadow the
    # installed `kernels` package and break `from transformers import LlamaForCausalLM`
    proc = _run_in_root(
        "import kernels, fastgpt.kernels.norms\n"
        "from transformers import LlamaForCausalLM\n"
        "print(kernels.__file__)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).resolve() != ROOT / "kernels" / "__init__.py"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args",
    [
        (
            "generate.py",
            ["--repeats=1", "--new_tokens=2", "--batch_sizes=1", "--compile=off", "--prompt_len=4"]
            + ["--overrides=n_layer=1,n_embd=64,n_head=2,n_kv_head=1,vocab_size=256,intermediate_size=128"],
        ),
        ("train_throughput.py", ["--configs=tiny", "--batch=1", "--seq=8", "--steps=1", "--warmup=0"]),
    ],
)
def test_benchmark_scripts_that_compare_with_transformers_run(script, args):
    # `python benchmarks/<script>.py` puts benchmarks/ first on sys.path, where benchmarks/kernels.py
    # shadowed Hugging Face's `kernels` package: "cannot import name 'CUDAProperties' from 'kernels'"
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--threads=1", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fastgpt" in proc.stdout and "transformers" in proc.stdout
