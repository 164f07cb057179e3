"""Loading a model directory (fastgpt's or Hugging Face's) into :class:`fastgpt.model.GPT`.

Apart from ``hf.py`` (the format: config and tensor-name conversions, reading and writing weights) so
that the model module can save through the format module without the format module importing the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastgpt.model.gpt import GPT
from fastgpt.model.hf import (
    ModelFormatError,
    _read_weights,
    check_device,
    config_from_hf,
    load_hf_weights,
    parse_dtype,
)

__all__ = ["from_pretrained"]


def _run_dir_hint(path: Path) -> str:
    """A training run's out_dir holds its own config.json (the run's) and the model in ``model/``:
    the likeliest wrong path a user gives, so say where the model is."""
    if (path / "model" / "config.json").is_file():
        return f"; this looks like a run dir: its model is {path / 'model'}"
    return ""


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> GPT:
    """Load a fastgpt or Hugging Face (gpt2 / llama / mistral) model directory; returns ``GPT`` in eval
    mode, in ``dtype`` (default float32; names such as ``"bf16"`` are accepted) on ``device`` (default
    CPU)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    dtype, device = parse_dtype(dtype), check_device(device)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelFormatError(f"{path}: not a model directory (no config.json){_run_dir_hint(path)}")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{cfg_file}: invalid JSON ({e})") from e
    if "fastgpt" not in hf and "model_type" not in hf and _run_dir_hint(path):
        raise ModelFormatError(f"{cfg_file}: a training run's config, not a model's{_run_dir_hint(path)}")
    config = config_from_hf(hf, str(cfg_file))
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")
    model.init_rope_tables()  # non-persistent buffers are not in the checkpoint
    load_hf_weights(model, _read_weights(path), str(path))
    model = model.to(device=device, dtype=dtype or torch.float32)
    model.init_rope_tables()  # keep the rotary tables in fp32 whatever the weights' dtype
    return model.eval()
