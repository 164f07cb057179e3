"""The Transformer: one class for the GPT-2 and Llama-3 families.

Choices, and why:

- Pre-norm residual blocks (``x + attn(norm(x))``, ``x + mlp(norm(x))``): stable at any depth; both
  families use them.
- Fused projections: one ``qkv`` matrix and, for SwiGLU, one ``gate_up`` matrix. One large matmul beats
  three small ones on every device; the Hugging Face layout (separate q/k/v, gate/up) is produced on
  save and split back on load (see ``hf.py``).
- Grouped-query attention (llama): ``n_kv_head`` K/V heads shared by ``n_head // n_kv_head`` query
  heads each; the KV cache shrinks by the same factor.
- Rotary positions (llama) are computed here from ``rope_theta`` and the optional Llama-3.1 frequency
  scaling, then applied by ``ops.rope`` with cos/sin gathered at each token's position id. GPT-2 adds a
  learned position embedding instead.
- Packed sequences: ``doc_ids`` marks the document of each token; attention never crosses documents and
  positions restart at each document (derived from ``doc_ids`` when ``position_ids`` is not given).
- The loss goes through ``ops.linear_cross_entropy``: the ``(tokens, vocab)`` logits are never
  materialised, which is most of the activation memory of small models with large vocabularies.
- Initialisation in one place (``init_weights``): N(0, 0.02), residual output projections scaled by
  ``1/sqrt(2 n_layer)`` so the residual stream's variance does not grow with depth (GPT-2).

Every hot op (attention, norms, rope, activations, cross-entropy) is called through ``fastgpt.ops``, so
the Triton kernels and the torch references are interchangeable without touching this file.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from fastgpt import ops
from fastgpt.model import hf
from fastgpt.model.config import GPTConfig
from fastgpt.model.kv_cache import KVCache
from fastgpt.model.sampling import sample_next_token


def rope_inv_freq(config: GPTConfig) -> torch.Tensor:
    """Inverse frequencies ``(head_dim/2,)`` with the Llama-3.1 scaling when configured: long
    wavelengths are slowed by ``factor``, short ones kept, and the band between is interpolated."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    s = config.rope_scaling
    if s is None:
        return inv_freq.float()
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, interpolated, scaled).float()


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` document ids -> positions that restart at 0 at each document start."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


class Norm(nn.Module):
    """LayerNorm with bias (gpt2) or RMSNorm (llama), both through the ops seam."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.rms = config.family == "llama"
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = None if self.rms else nn.Parameter(torch.zeros(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.window
        qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_out, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        doc_ids: torch.Tensor | None,
        kv_cache: KVCache | None,
        doc_extents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``doc_extents``: ``ops.document_extents(doc_ids)``, computed once per forward by the model."""
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, Hq, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        if rope is not None:
            q, k = ops.rope(q, k, *rope)
        if kv_cache is not None:
            k, v, doc_ids = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, Tk, hd), Tk = cached + T
            doc_extents = None  # the cache's ids cover Tk positions
        y = ops.attention(
            q, k, v, causal=True, doc_ids=doc_ids, window=self.window, doc_extents=doc_extents
        )  # (B, Hq, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.family == "llama"
        fc_out = 2 * config.intermediate_size if self.swiglu else config.intermediate_size
        self.fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)  # llama: [gate; up]
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = ops.swiglu(gate, up)
        else:
            h = ops.gelu_tanh(h)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = Norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = Norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, doc_ids, kv_cache, doc_extents=None):
        x = x + self.attn(self.attn_norm(x), rope, doc_ids, kv_cache, doc_extents)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """A decoder-only Transformer of the ``gpt2`` or ``llama`` family (see the module docstring)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_seq_len, config.n_embd) if config.family == "gpt2" else None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_norm = Norm(config)
        self.lm_head = (
            None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        if config.uses_rope:
            # (max_seq_len, head_dim/2) tables; not saved with the weights: they follow from the config
            self.register_buffer(
                "rope_cos", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False
            )
            self.register_buffer(
                "rope_sin", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False
            )
            self.init_rope_tables()
        self.init_weights()
        # recompute each block in the backward instead of keeping its activations (training only;
        # set by the training loop's --activation_checkpointing, see set_activation_checkpointing)
        self.activation_checkpointing = False

    @torch.no_grad()
    def init_rope_tables(self) -> None:
        """(Re)compute the rotary cos/sin tables in fp32 (after building on the meta device, say)."""
        if not self.config.uses_rope:
            return
        inv_freq = rope_inv_freq(self.config)
        angles = torch.outer(torch.arange(self.config.max_seq_len, dtype=torch.float32), inv_freq)
        device = self.rope_cos.device
        if device.type == "meta":
            return
        self.rope_cos = angles.cos().to(device)
        self.rope_sin = angles.sin().to(device)

    # ------------------------------------------------------------------------------------------ weights
    @torch.no_grad()
    def init_weights(self) -> None:
        """The init scheme, in one place."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith("attn.proj") or name.endswith("mlp.proj")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, Norm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The output projection ``(V, C)``: the input embedding when tied."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    # ------------------------------------------------------------------------------------------ forward
    def _check_positions(self, position_ids: torch.Tensor) -> None:
        """A position past the RoPE/learned-position table is an error, not an index fault. Reading
        the max syncs with the device and would break a ``torch.compile`` graph, so a compiled forward
        skips the check (the eager path of the same code has it)."""
        if torch.compiler.is_compiling() or position_ids.numel() == 0:
            return
        max_pos = int(position_ids.max())
        if max_pos >= self.config.max_seq_len:
            raise ValueError(
                f"position {max_pos} is beyond the model's max_seq_len={self.config.max_seq_len}"
            )

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` -> final-normed hidden states ``(B, T, C)``."""
        B, T = idx.shape
        if kv_cache is not None:
            position_ids, doc_ids = kv_cache.prepare(idx, position_ids, doc_ids)
            self._check_positions(position_ids)
        elif position_ids is None and doc_ids is None:
            # the common training case: the bound is known without reading the tensor (no device sync)
            if T > self.config.max_seq_len:
                raise ValueError(
                    f"sequence length {T} is beyond the model's max_seq_len={self.config.max_seq_len}"
                )
            position_ids = torch.arange(T, device=idx.device)[None]  # (1, T)
        else:
            if position_ids is None:
                position_ids = positions_from_doc_ids(doc_ids)
            self._check_positions(position_ids)
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rope = (self.rope_cos[position_ids], self.rope_sin[position_ids])  # (B|1, T, hd/2) each
        # the attention kernel's view of the documents: one computation shared by every layer
        doc_extents = ops.document_extents(doc_ids) if doc_ids is not None and kv_cache is None else None
        if self.activation_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled():
            for block in self.blocks:
                # non-reentrant: works with ZeRO-3's parameter hooks, torch.compile and inputs that
                # need no gradient; the block's forward runs again in the backward
                x = torch.utils.checkpoint.checkpoint(
                    block, x, rope, doc_ids, None, doc_extents, use_reentrant=False
                )
        else:
            for block in self.blocks:
                x = block(x, rope, doc_ids, kv_cache, doc_extents)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.final_norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        ignore_index: int = -100,
        loss_reduction: str = "mean",
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits ``(B, T, V)`` in fp32 when ``targets`` is None (only the last ``logits_to_keep``
        positions if > 0), else the cross-entropy loss against ``targets`` ``(B, T)`` (``ignore_index``
        entries do not count; ``loss_reduction`` as in ``ops.cross_entropy``)."""
        h = self.hidden_states(idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=kv_cache)
        if targets is None:
            if logits_to_keep > 0:
                h = h[:, -logits_to_keep:]
            return F.linear(h, self.lm_head_weight.to(h.dtype)).float()
        B, T, C = h.shape
        loss = ops.linear_cross_entropy(
            h.reshape(B * T, C),
            self.lm_head_weight,
            targets.reshape(B * T),
            ignore_index=ignore_index,
            reduction=loss_reduction,
        )
        return loss.view(B, T) if loss_reduction == "none" else loss

    def token_logprobs(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """``(B, T)`` fp32 ``log p(targets[b, t] | idx[b, :t+1])``; 0 where the target is ignored."""
        nll = self(
            idx,
            targets,
            position_ids=position_ids,
            doc_ids=doc_ids,
            ignore_index=ignore_index,
            loss_reduction="none",
        )
        return -nll

    # ----------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` ``(B, T)`` by up to ``max_new_tokens`` tokens with a KV cache; returns
        ``(B, T + n)``. ``temperature=0`` is greedy. Rows that emitted ``eos_token_id`` keep emitting it
        until every row has, then generation stops."""
        B, T = idx.shape
        if T + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len={self.config.max_seq_len}"
            )
        cache = KVCache(self.config, B, T + max_new_tokens, device=idx.device)
        logits = self(idx, kv_cache=cache, logits_to_keep=1)[:, -1]  # (B, V)
        out = [idx]
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            nxt = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            out.append(nxt[:, None])
            if eos_token_id is not None and bool(done.all()):
                break
            logits = self(nxt[:, None], kv_cache=cache, logits_to_keep=1)[:, -1]
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------------------------ accounting
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count of the whole model, also while DeepSpeed ZeRO-3 holds each parameter as an
        empty placeholder of this rank's partition: the full size is then ``ds_numel`` (``numel()`` is
        0), so counts and MFU are the same at every ZeRO stage."""
        n = sum(_full_numel(p) for p in self.parameters())
        if exclude_embeddings:
            n -= _full_numel(self.wte.weight) if self.lm_head is not None else 0
            n -= _full_numel(self.wpe.weight) if self.wpe is not None else 0
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): ``6 N`` for the matmul parameters ``N`` (the
        tied embedding counts once, as the output projection; lookup-only embeddings do not) plus
        ``12 L H hd T`` for the attention scores and weighted sum (PaLM appendix B; causal masking is
        not discounted, as is customary for MFU)."""
        c = self.config
        T = c.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_params(exclude_embeddings=True)
        n_matmul -= sum(
            _full_numel(p) for p in self.parameters() if len(getattr(p, "ds_shape", p.shape)) == 1
        )
        return 6 * n_matmul + 12 * c.n_layer * c.n_head * c.head_dim * T

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: decay on hidden matrices and an untied head; none on norms, biases and
        embeddings. Each group carries ``kind`` (``matrix``, ``embedding``, ``head``, ``vector``) so
        optimizers such as Muon can treat hidden matrices differently."""
        kinds: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "head": [], "vector": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(("wte.", "wpe.")):
                kinds["embedding"].append(p)
            elif name.startswith("lm_head."):
                kinds["head"].append(p)
            elif p.ndim >= 2:
                kinds["matrix"].append(p)
            else:
                kinds["vector"].append(p)
        decay = {"matrix": weight_decay, "head": weight_decay, "embedding": 0.0, "vector": 0.0}
        return [{"params": ps, "weight_decay": decay[kind], "kind": kind} for kind, ps in kinds.items() if ps]

    # ------------------------------------------------------------------------------------------ save
    def save_pretrained(self, path, *, dtype: torch.dtype | None = None) -> None:
        """Write the Hugging Face layout (``config.json`` + ``model.safetensors``) atomically."""
        hf.save_pretrained(self, path, dtype=dtype)


def set_activation_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Turn per-block activation checkpointing on or off in every :class:`GPT` inside ``module`` (a
    policy with a value head wraps one). In training forwards each Transformer block then keeps only
    its input and recomputes its activations in the backward: activation memory per layer falls to one
    ``(B, T, C)`` tensor for about a third more compute. Returns how many models were set (0: none)."""
    models = [m for m in module.modules() if isinstance(m, GPT)]
    for m in models:
        m.activation_checkpointing = enabled
    return len(models)


def _full_numel(p: torch.Tensor) -> int:
    """Elements of ``p`` as the model defines it, not of a ZeRO-3 rank's partition."""
    return int(getattr(p, "ds_numel", p.numel()))
