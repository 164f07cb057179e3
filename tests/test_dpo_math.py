"""DPO / IPO / label-smoothed losses and the Bradley-Terry loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fastgpt.rl import bradley_terry_loss, dpo_loss

# policy chosen/rejected -1, -2; reference -1.5, -1.5  =>  h = 0.5 - (-0.5) = 1
PAIR = (torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))


def _softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_sigmoid_hand_value_and_rewards():
    loss, stats = dpo_loss(*PAIR, beta=0.5)
    assert loss.item() == pytest.approx(_softplus(-0.5))  # -log sigmoid(beta * h)
    assert stats["chosen_reward"].item() == pytest.approx(0.25)
    assert stats["rejected_reward"].item() == pytest.approx(-0.25)
    assert stats["margin"].item() == pytest.approx(0.5)
    assert stats["accuracy"].item() == 1.0


def test_dpo_label_smoothing_and_ipo_hand_values():
    loss, _ = dpo_loss(*PAIR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * _softplus(-0.5) + 0.1 * _softplus(0.5))
    loss, _ = dpo_loss(*PAIR, beta=0.25, loss_type="ipo")
    assert loss.item() == pytest.approx((1.0 - 1 / (2 * 0.25)) ** 2)
    loss, _ = dpo_loss(*PAIR, beta=0.5, loss_type="ipo")  # margin already at its target 1/(2 beta)
    assert loss.item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*PAIR, loss_type="hinge")


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, PAIR[2], PAIR[3], beta=0.5)
    loss.backward()
    # d/dh of softplus(-beta h) = -beta * sigmoid(-beta h)
    expected = 0.5 / (1 + math.exp(0.5))
    assert chosen.grad.item() == pytest.approx(-expected)
    assert rejected.grad.item() == pytest.approx(expected)


def test_bradley_terry_hand_values():
    loss, stats = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((_softplus(-1.0) + _softplus(1.0)) / 2)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx(0.0)
