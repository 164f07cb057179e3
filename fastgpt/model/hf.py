"""Hugging Face interop: the one model format.

A model directory is what transformers writes for ``GPT2LMHeadModel`` / ``LlamaForCausalLM``:
``config.json`` + ``model.safetensors`` (or shards with ``model.safetensors.index.json``). fastgpt
writes exactly that (plus a ``fastgpt`` entry in config.json that transformers ignores) so
transformers, vLLM and lm-eval read fastgpt models, and fastgpt reads theirs.

Weights are only read through safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file

from fastgpt.errors import UserError
from fastgpt.model.config import GPTConfig

if TYPE_CHECKING:  # annotations only: the model module saves through this one (GPT.save_pretrained)
    from fastgpt.model.gpt import GPT

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral")
# Buffers that some HF checkpoints carry and that are derived, not learned.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


class ModelFormatError(UserError):
    """A model directory that fastgpt cannot load, with the file/tensor and what was expected."""


# ------------------------------------------------------------------------------------------- config
def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """HF ``config.json`` dict -> GPTConfig (fastgpt's own entry wins when present)."""
    if "fastgpt" in hf:
        return GPTConfig.from_dict(hf["fastgpt"])
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelFormatError(
            f"{source}: model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
        )

    def need(key: str) -> Any:
        if key not in hf:
            raise ModelFormatError(f"{source}: missing field {key!r} required for model_type {model_type!r}")
        return hf[key]

    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ModelFormatError(f"{source}: activation_function {act!r} unsupported (expected gelu_new)")
        return GPTConfig(
            family="gpt2",
            vocab_size=need("vocab_size"),
            n_layer=need("n_layer"),
            n_head=need("n_head"),
            n_embd=need("n_embd"),
            intermediate_size=hf.get("n_inner") or 4 * need("n_embd"),
            max_seq_len=need("n_positions"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ModelFormatError(f"{source}: attention_bias/mlp_bias=true is not supported for {model_type}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelFormatError(f"{source}: hidden_act {hf['hidden_act']!r} unsupported (expected silu)")
    rope = hf.get("rope_parameters") or {}
    rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ModelFormatError(f"{source}: rope scaling type {kind!r} unsupported (expected llama3)")
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: scaling[k] for k in keys}
    n_head = need("num_attention_heads")
    return GPTConfig(
        family="llama",
        vocab_size=need("vocab_size"),
        n_layer=need("num_hidden_layers"),
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=need("hidden_size"),
        head_dim=hf.get("head_dim") or need("hidden_size") // n_head,
        intermediate_size=need("intermediate_size"),
        max_seq_len=need("max_position_embeddings"),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        window=hf.get("sliding_window") if model_type == "mistral" else None,
    )


def config_to_hf(c: GPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """GPTConfig -> HF ``config.json`` dict (GPT2LMHeadModel or LlamaForCausalLM)."""
    dtype_name = str(dtype).removeprefix("torch.")
    if c.family == "gpt2":
        hf = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_positions": c.max_seq_len,
            "n_ctx": c.max_seq_len,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.intermediate_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": c.tie_embeddings,
        }
    else:
        hf = {
            "architectures": ["MistralForCausalLM" if c.window else "LlamaForCausalLM"],
            "model_type": "mistral" if c.window else "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim,
            "max_position_embeddings": c.max_seq_len,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,
            "rope_scaling": None if c.rope_scaling is None else {"rope_type": "llama3", **c.rope_scaling},
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": c.tie_embeddings,
        }
        if c.window:
            hf["sliding_window"] = c.window
    hf["dtype"] = dtype_name  # transformers >= 4.56
    hf["torch_dtype"] = dtype_name  # older transformers
    hf["fastgpt"] = c.to_dict()
    return hf


# ---------------------------------------------------------------------------------------- weights
def _hf_to_fastgpt_map(c: GPTConfig) -> dict[str, tuple[list[str], Callable | None]]:
    """fastgpt parameter name -> (HF tensor names it is built from, how to combine them)."""
    m: dict[str, tuple[list[str], Callable | None]] = {}
    t = lambda ws: ws[0].t()  # GPT-2's Conv1D stores (in, out)
    cat = lambda ws: torch.cat(ws, dim=0)
    if c.family == "gpt2":
        m["wte.weight"] = (["transformer.wte.weight"], None)
        m["wpe.weight"] = (["transformer.wpe.weight"], None)
        for i in range(c.n_layer):
            h = f"transformer.h.{i}."
            b = f"blocks.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                m[b + ours + ".weight"] = ([h + theirs + ".weight"], None)
                m[b + ours + ".bias"] = ([h + theirs + ".bias"], None)
            for ours, theirs in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                m[b + ours + ".weight"] = ([h + theirs + ".weight"], t)
                m[b + ours + ".bias"] = ([h + theirs + ".bias"], None)
        m["final_norm.weight"] = (["transformer.ln_f.weight"], None)
        m["final_norm.bias"] = (["transformer.ln_f.bias"], None)
    else:
        m["wte.weight"] = (["model.embed_tokens.weight"], None)
        for i in range(c.n_layer):
            h = f"model.layers.{i}."
            b = f"blocks.{i}."
            m[b + "attn_norm.weight"] = ([h + "input_layernorm.weight"], None)
            m[b + "mlp_norm.weight"] = ([h + "post_attention_layernorm.weight"], None)
            qkv = [h + f"self_attn.{x}_proj.weight" for x in "qkv"]
            m[b + "attn.qkv.weight"] = (qkv, cat)
            m[b + "attn.proj.weight"] = ([h + "self_attn.o_proj.weight"], None)
            m[b + "mlp.fc.weight"] = ([h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"], cat)
            m[b + "mlp.proj.weight"] = ([h + "mlp.down_proj.weight"], None)
        m["final_norm.weight"] = (["model.norm.weight"], None)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (["lm_head.weight"], None)
    return m


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """fastgpt parameters -> HF tensor names (fused matrices split back, Conv1D transposed)."""
    c = model.config
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, (hf_names, combine) in _hf_to_fastgpt_map(c).items():
        w = ours[name]
        if len(hf_names) == 1:
            out[hf_names[0]] = (w.t() if combine is not None else w).contiguous()
            continue
        if name.endswith("attn.qkv.weight"):
            sizes = [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]
        else:  # mlp.fc = [gate; up]
            sizes = [c.intermediate_size, c.intermediate_size]
        for hf_name, part in zip(hf_names, w.split(sizes, dim=0)):
            out[hf_name] = part.contiguous()
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    def load_file(file: Path) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors(file)
        except SafetensorError as e:  # truncated by an interrupted copy, or not safetensors at all
            raise ModelFormatError(f"{file}: not a readable safetensors file ({e})") from None

    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).exists():
                raise ModelFormatError(f"{index}: shard {shard!r} listed in weight_map is missing")
            tensors.update(load_file(path / shard))
        return tensors
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ModelFormatError(
        f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json + shards, "
        "or pytorch_model.bin)"
    )


def load_hf_weights(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy HF-named ``tensors`` into ``model``, checking names, shapes and dtypes."""
    c = model.config
    ours = model.state_dict()
    mapping = _hf_to_fastgpt_map(c)
    used: set[str] = set()
    # HF llama/gpt2 checkpoints may carry the head explicitly even when tied; some untied ones lack it
    for name, (hf_names, combine) in mapping.items():
        parts = []
        for hf_name in hf_names:
            if hf_name not in tensors:
                raise ModelFormatError(f"{source}: missing tensor {hf_name!r} (needed for {name})")
            w = tensors[hf_name]
            if not w.is_floating_point():
                raise ModelFormatError(f"{source}: tensor {hf_name!r} has dtype {w.dtype}, expected a float")
            parts.append(w)
            used.add(hf_name)
        w = combine(parts) if combine is not None else parts[0]
        if tuple(w.shape) != tuple(ours[name].shape):
            raise ModelFormatError(
                f"{source}: tensor {' + '.join(hf_names)} has shape {tuple(w.shape)}, "
                f"expected {tuple(ours[name].shape)} for the config in config.json"
            )
        ours[name] = w
    unexpected = [
        k
        for k in tensors
        if k not in used
        and not k.endswith(_IGNORED_SUFFIXES)
        and not (k == "lm_head.weight" and c.tie_embeddings)
    ]
    if unexpected:
        raise ModelFormatError(f"{source}: unexpected tensor(s) {unexpected[:5]} for a {c.family} model")
    model.load_state_dict(ours, strict=False)


# -------------------------------------------------------------------------------------- load / save
# Names people type for --dtype: torch's own and the short ones the training configs use.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; None stays None. A name
    outside :data:`DTYPE_NAMES` is a ``ValueError`` listing them (not torch's AttributeError)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise UserError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}") from None


def check_device(device: torch.device | str | None) -> torch.device:
    """The device to load onto (None: CPU), refused with one line when this machine cannot use it,
    instead of torch's deep ``AssertionError: Torch not compiled with CUDA enabled``."""
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as e:
        raise UserError(f"device {device!r}: {e} (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model dir is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: GPT, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``path``. Each file is written to a temp file
    and renamed into place, so a crash never leaves a half-written file (other files in the directory,
    such as the tokenizer's, are left alone)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = dtype or next(model.parameters()).dtype
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in to_hf_state_dict(model).items()}
    _atomic_write(path / "model.safetensors", lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    config = json.dumps(config_to_hf(model.config, dtype), indent=2)
    _atomic_write(path / "config.json", lambda f: Path(f).write_text(config))
