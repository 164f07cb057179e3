"""The repository's ``kernels/`` folder is ``fastgpt.kernels``; Python started in the repository root
must still see Hugging Face's ``kernels`` package (transformers imports it) under that name."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
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
