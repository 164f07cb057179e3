"""Packaging for fastgpt.

The Triton kernels live in the top-level ``kernels/`` folder (so a reader finds them next to the
library) but are installed as the subpackage ``fastgpt.kernels``: the name ``kernels`` is taken on
PyPI, so it must never become a top-level module.
"""

from setuptools import find_packages, setup

library = find_packages(include=["fastgpt", "fastgpt.*"])

extras = {
    # test-only needs: reference implementations (transformers) and property tests
    "dev": [
        "pytest>=8",
        "pytest-timeout",
        "hypothesis",
        "ruff==0.17.6",  # pinned: formatter output changes between releases
        "transformers>=4.45",
        "accelerate",
        "gguf",
        "tiktoken",
        "jinja2",
        "pyyaml",
        "pyarrow",
        "matplotlib",
        "fastapi",
        "uvicorn",
        "httpx",
        "openai",
        "playwright",  # drives Debian's chromium for the web-chat test (never `playwright install`)
        "reasoning-gym==0.1.25",  # the RL tasks' generators (kept equal to the [rl] pin)
    ],
    "gpu": ["flash-attn"],
    "serve": ["fastapi", "uvicorn", "jinja2"],
    # pinned: the generated problems (and so the train/held-out split) depend on the generator version
    "rl": ["reasoning-gym==0.1.25"],
    "data": ["pyarrow", "datasets", "pyyaml"],
    "report": ["matplotlib"],
}

setup(
    name="fastgpt",
    version="0.1.0",
    description="Train ChatGPT-style language models end to end: tokenizer, pretraining, SFT, RL, serving.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=library + ["fastgpt.kernels"],
    package_dir={"fastgpt.kernels": "kernels"},
    package_data={"fastgpt": ["serve/static/*", "data/*.json"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "deepspeed>=0.15",
        "wandb",
        "safetensors",
        "numpy",
        "tqdm",
        "tokenizers>=0.20",
        "tiktoken",
        "jinja2",
        "pyyaml",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["fastgpt=fastgpt.cli:main"]},
)
