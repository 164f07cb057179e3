"""A language model with a scalar head: the reward model, and PPO's critic (value model).

Both read the backbone's final hidden states (``GPT.hidden_states``, after the final norm) through one
linear layer ``C -> 1``:

- the **reward model** scores a whole response with the value at its last token (the end-of-turn
  token, which has seen the prompt and the entire reply);
- the **critic** predicts, at every token, the return still to come from there (one value per token).

The head is initialised with std ``1 / sqrt(C + 1)`` (as in Stiennon et al., 2020), which gives scores
of order 1 from unit-scale normed hidden states. On disk a scalar-head model is an ordinary model
directory (``config.json`` + ``model.safetensors`` + tokenizer, loadable as a language model by fastgpt
and transformers) plus ``score_head.safetensors`` and ``score_head.json`` (what the head is for).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fastgpt import ops
from fastgpt.model import from_pretrained

__all__ = ["HEAD_FILE", "PolicyWithValue", "ScalarHeadModel"]

HEAD_FILE = "score_head.safetensors"
HEAD_META = "score_head.json"


class ScalarHeadModel(nn.Module):
    """A GPT backbone plus a linear ``C -> 1`` head (see the module docstring)."""

    def __init__(self, backbone: nn.Module, *, kind: str = "reward"):
        super().__init__()
        if kind not in ("reward", "value"):
            raise ValueError(f"kind={kind!r}: expected 'reward' or 'value'")
        self.backbone, self.kind = backbone, kind
        self.config = backbone.config
        width = backbone.config.n_embd
        p = next(backbone.parameters())
        self.head = nn.Linear(width, 1, device=p.device, dtype=p.dtype)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(width + 1))
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` -> a score per position ``(B, T)`` in fp32."""
        h = self.backbone.hidden_states(idx, position_ids=position_ids, doc_ids=doc_ids)  # (B, T, C)
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()

    def score(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The score of each row read at index ``last`` ``(B,)`` -> ``(B,)``."""
        scores = self(idx[:, : int(last.max()) + 1])
        return scores.gather(1, last[:, None]).squeeze(1)

    # ------------------------------------------------------------------------------ what the loop needs
    def param_groups(self, weight_decay: float) -> list[dict]:
        """The backbone's optimizer groups, with the head's weight as a ``head`` and its bias as a
        ``vector`` parameter (AdamW under Muon too)."""
        groups = self.backbone.param_groups(weight_decay)
        groups.append({"params": [self.head.weight], "weight_decay": weight_decay, "kind": "head"})
        groups.append({"params": [self.head.bias], "weight_decay": 0.0, "kind": "vector"})
        return groups

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.backbone.flops_per_token(seq_len)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        return self.backbone.num_params(exclude_embeddings) + sum(p.numel() for p in self.head.parameters())

    # ------------------------------------------------------------------------------------------ files
    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path, dtype=dtype)
        head = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in self.head.state_dict().items()
        }
        tmp = path / f".{HEAD_FILE}.tmp"
        save_file(head, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / HEAD_FILE)
        meta = path / f".{HEAD_META}.tmp"
        meta.write_text(json.dumps({"kind": self.kind, "width": self.config.n_embd}, indent=2))
        os.replace(meta, path / HEAD_META)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        kind: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        require_head: bool = False,
    ) -> ScalarHeadModel:
        """A scalar-head model from a model dir: its saved head when it has one, else a fresh head on the
        language model (``require_head=True`` makes a missing head an error: a reward model must be trained)."""
        path = Path(path)
        has_head = (path / HEAD_FILE).is_file()
        if require_head and not has_head:
            raise FileNotFoundError(
                f"{path}: no {HEAD_FILE}; train a reward model first (python -m fastgpt.reward --out_dir=...)"
            )
        saved_kind = (
            json.loads((path / HEAD_META).read_text())["kind"] if (path / HEAD_META).is_file() else None
        )
        model = cls(from_pretrained(path, dtype=dtype, device=device), kind=kind or saved_kind or "reward")
        if has_head:
            state = load_file(str(path / HEAD_FILE), device=str(device or "cpu"))
            model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in state.items()})
        return model


class PolicyWithValue(nn.Module):
    """PPO's trained pair, as one module so the one training loop (one optimizer, one DeepSpeed engine)
    updates both: the policy (a GPT) and a value estimate per token.

    - ``critic=None`` (the memory-conscious default): a value head on the policy's own final hidden
      states; one backbone, one forward pass gives log-probabilities and values.
    - ``critic=ScalarHeadModel(...)``: a separate value model (InstructGPT initialises it from the
      reward model); twice the trained parameters, no interference between the two losses.

    ``save_pretrained`` writes the policy as the run's model directory; the value head or critic is
    saved beside it (``value_head.safetensors``, or ``critic.safetensors`` + ``critic_config.json``).
    """

    def __init__(self, policy: nn.Module, critic: ScalarHeadModel | None = None):
        super().__init__()
        self.policy, self.critic = policy, critic
        self.config = policy.config
        self.value_head = None
        if critic is None:
            p = next(policy.parameters())
            self.value_head = nn.Linear(policy.config.n_embd, 1, device=p.device, dtype=p.dtype)
            nn.init.zeros_(self.value_head.weight)  # values start at 0: no made-up baseline
            nn.init.zeros_(self.value_head.bias)

    def forward(self, *args, **kwargs):
        return self.policy(*args, **kwargs)

    def logprobs_and_values(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(targets) (B, T) fp32, values (B, T) fp32)`` for ``inputs``/``targets`` ``(B, T)``."""
        if self.critic is not None:
            logprobs = self.policy.token_logprobs(inputs, targets, ignore_index=ignore_index)
            return logprobs.float(), self.critic(inputs)
        h = self.policy.hidden_states(inputs)  # (B, T, C): shared by the LM head and the value head
        B, T, C = h.shape
        nll = ops.linear_cross_entropy(
            h.reshape(B * T, C),
            self.policy.lm_head_weight,
            targets.reshape(B * T),
            ignore_index=ignore_index,
            reduction="none",
        )
        values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)
        return -nll.view(B, T).float(), values.float()

    def param_groups(self, weight_decay: float) -> list[dict]:
        groups = self.policy.param_groups(weight_decay)
        if self.critic is not None:
            groups += self.critic.param_groups(weight_decay)
        else:
            groups.append({"params": [self.value_head.weight], "weight_decay": 0.0, "kind": "head"})
            groups.append({"params": [self.value_head.bias], "weight_decay": 0.0, "kind": "vector"})
        return groups

    def flops_per_token(self, seq_len: int | None = None) -> float:
        extra = self.critic.flops_per_token(seq_len) if self.critic is not None else 0.0
        return self.policy.flops_per_token(seq_len) + extra

    def num_params(self, exclude_embeddings: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        path = Path(path)
        self.policy.save_pretrained(path, dtype=dtype)
        # flat files beside the policy (checkpoint export copies a model dir file by file)
        value = self.critic if self.critic is not None else self.value_head
        name = "critic" if self.critic is not None else "value_head"
        state = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in value.state_dict().items()
        }
        tmp = path / f".{name}.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / f"{name}.safetensors")
        if self.critic is not None:
            meta = path / ".critic_config.json.tmp"
            meta.write_text(json.dumps(self.critic.config.to_dict(), indent=2))
            os.replace(meta, path / "critic_config.json")
