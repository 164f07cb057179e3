"""Model configuration: one flat dataclass, families as options, presets by name.

``family`` selects the architecture recipe:

- ``gpt2``: learned absolute positions, LayerNorm with bias, GELU (tanh approximation), biases in every
  linear layer, tied input/output embeddings (as OpenAI's GPT-2).
- ``llama``: rotary positions (``rope_theta``, optional Llama-3.1 frequency scaling), RMSNorm, SwiGLU
  MLP, grouped-query attention (``n_kv_head < n_head``), no biases, tied or untied embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fastgpt.errors import UserError

FAMILIES = ("gpt2", "llama")


@dataclass
class GPTConfig:
    family: str = "llama"
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None -> n_head (plain multi-head attention)
    n_embd: int = 256
    head_dim: int | None = None  # None -> n_embd // n_head
    intermediate_size: int | None = None  # None -> 4*d (gpt2) or ~8/3*d rounded to 64 (llama)
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    # Llama-3.1 scaling: {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict[str, Any] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    window: int | None = None  # sliding-window attention span in tokens (None: full causal)
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried through save/load

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head <= 0 or self.n_embd % self.n_head != 0:
                raise UserError(
                    f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
                )
            self.head_dim = self.n_embd // self.n_head
        if self.intermediate_size is None:
            if self.family == "gpt2":
                self.intermediate_size = 4 * self.n_embd
            else:  # SwiGLU has 3 matrices: 8/3 d keeps the parameter count of a 4d two-matrix MLP
                self.intermediate_size = 64 * ((8 * self.n_embd // 3 + 63) // 64)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"GPTConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.family not in FAMILIES:
            raise bad("family", f"one of {FAMILIES}")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise bad(name, "a positive integer")
        if self.n_head % self.n_kv_head != 0:
            raise bad("n_kv_head", f"a divisor of n_head={self.n_head}")
        if self.head_dim % 2 != 0:
            raise bad("head_dim", "an even number (rotary embeddings rotate pairs)")
        if self.family == "gpt2":
            if self.n_kv_head != self.n_head:
                raise bad("n_kv_head", f"equal to n_head={self.n_head} for the gpt2 family")
            if self.head_dim * self.n_head != self.n_embd:
                raise bad("head_dim", "n_embd // n_head for the gpt2 family")
        if self.window is not None and self.window <= 0:
            raise bad("window", "None or a positive number of tokens")
        if self.rope_scaling is not None:
            needed = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
            missing = needed - set(self.rope_scaling)
            if missing:
                raise bad("rope_scaling", f"a dict with keys {sorted(needed)} (missing {sorted(missing)})")

    # derived -------------------------------------------------------------------------------------------
    @property
    def bias(self) -> bool:
        return self.family == "gpt2"

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"GPTConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


_LLAMA3_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The CPU default: ~5M parameters, trains in minutes on 2 cores.
    "tiny": dict(
        family="llama", vocab_size=4096, n_layer=6, n_head=4, n_kv_head=2, n_embd=256, max_seq_len=256
    ),
    # GPT-2 small (124M) and medium (350M), as released by OpenAI.
    "gpt2": dict(family="gpt2", vocab_size=50257, n_layer=12, n_head=12, n_embd=768, max_seq_len=1024),
    "gpt2-medium": dict(
        family="gpt2", vocab_size=50257, n_layer=24, n_head=16, n_embd=1024, max_seq_len=1024
    ),
    # Llama-3.2-1B's shape (1.24B with its 128k vocab).
    "llama-1b": dict(
        family="llama",
        vocab_size=128256,
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        intermediate_size=8192,
        max_seq_len=8192,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_SCALING,
        tie_embeddings=True,
    ),
    # HuggingFaceTB/SmolLM2-135M's exact architecture.
    "smollm2-135m": dict(
        family="llama",
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        intermediate_size=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
    ),
}
