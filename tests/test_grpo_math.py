"""GRPO math against hand-computed values: group advantages, clipped objective, aggregation, k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from fastgpt.rl import aggregate, clipped_policy_loss, group_advantages, kl_k3


def test_group_advantages_std_normalised_and_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    adv, zero_var = group_advantages(rewards, 4, eps=1e-4)
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1/sqrt(3)
    a = 0.5 / (1 / math.sqrt(3) + 1e-4)
    # group 2: mean 0.75, deviations (-.75, -.75, -.75, 2.25), unbiased std sqrt((3 * .5625 + 5.0625) / 3) = 1.5
    b = 1 / (1.5 + 1e-4)
    expected = [a, -a, -a, a, 0, 0, 0, 0, -0.75 * b, -0.75 * b, -0.75 * b, 2.25 * b]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert zero_var.tolist() == [False, True, False]

    dr, _ = group_advantages(rewards, 4, normalize_std=False)
    torch.testing.assert_close(
        dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.75, -0.75, -0.75, 2.25])
    )


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 4)


def _logprobs_for_ratios(ratios):
    old = torch.full((1, len(ratios)), -1.0)
    new = old + torch.log(torch.tensor([ratios]))
    return new.requires_grad_(True), old


def test_clipped_loss_hand_values_symmetric_and_clip_higher():
    new, old = _logprobs_for_ratios([1.5, 0.5, 1.0])
    mask = torch.ones(1, 3)
    # A = +1: -min(r, clip(r)) = -(1.2, 0.5, 1.0)
    loss, stats = clipped_policy_loss(new, old, torch.tensor([1.0]), mask, clip_low=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.0) / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    # A = -1: -min(-r, -clip(r)) = (1.5, 0.8, 1.0)
    loss, stats = clipped_policy_loss(new, old, torch.tensor([-1.0]), mask, clip_low=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.0) / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    # DAPO clip-higher: the ratio may rise to 1.28 before clipping for A > 0
    loss, _ = clipped_policy_loss(new, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.5 + 1.0) / 3)


def test_clipped_objective_gradient_signs():
    """Descent raises log p of tokens with positive advantage and lowers it for negative advantage,
    and the gradient vanishes where the ratio is clipped in the advantage's direction."""
    new, old = _logprobs_for_ratios([1.0, 1.1, 1.5, 0.5])
    mask = torch.ones(1, 4)
    loss, _ = clipped_policy_loss(new, old, torch.tensor([2.0]), mask, clip_low=0.2)
    loss.backward()
    g = new.grad[0]
    # d/dlogp of -(r * A) / n = -r * A / n, zero for r = 1.5 > 1.2; r = 0.5 is below the clip but A > 0 keeps it
    torch.testing.assert_close(g, torch.tensor([-2.0 / 4, -2.2 / 4, 0.0, -1.0 / 4]))
    new.grad = None
    loss, _ = clipped_policy_loss(new, old, torch.tensor([-2.0]), mask, clip_low=0.2)
    loss.backward()
    torch.testing.assert_close(new.grad[0], torch.tensor([2.0 / 4, 2.2 / 4, 3.0 / 4, 0.0]))


def test_aggregation_modes():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(per_token, mask, "token").item() == pytest.approx(10 / 4)
    assert aggregate(per_token, mask, "sequence").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(per_token, mask, "fixed", fixed_len=3).item() == pytest.approx(10 / 6)
    assert aggregate(per_token, mask, "token", denominator=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="fixed_len"):
        aggregate(per_token, mask, "fixed")


def test_sequence_aggregation_is_the_original_grpo_weighting():
    new, old = _logprobs_for_ratios([1.0, 1.0, 1.0])
    two = torch.cat([new, new]), torch.cat([old, old])
    mask2 = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    seq, _ = clipped_policy_loss(*two, adv, mask2, aggregation="sequence")
    tok, _ = clipped_policy_loss(*two, adv, mask2, aggregation="token")
    assert seq.item() == pytest.approx((-1 + 1) / 2)  # each completion weighs the same
    assert tok.item() == pytest.approx((-3 + 1) / 4)  # each token weighs the same


def test_k3_hand_value_and_unbiased_for_kl():
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-2.0)).item() == pytest.approx(math.exp(-1))
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-1.0)).item() == 0.0
    # Monte Carlo: mean k3 over samples of p approaches the exact KL(p || q)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = kl_k3(p.log()[samples], q.log()[samples]).mean()
    exact = (p * (p / q).log()).sum()
    assert estimate.item() == pytest.approx(exact.item(), rel=0.03)
    assert (kl_k3(p.log()[samples], q.log()[samples]) >= 0).all()
