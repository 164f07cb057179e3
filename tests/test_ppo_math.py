"""PPO math against hand-computed values: GAE, whitening, the clipped value loss."""

from __future__ import annotations

import pytest
import torch

from fastgpt.rl import gae, masked_whiten, value_loss


def test_gae_hand_example():
    # row 0 (gamma=1, lam=0.5): deltas back to front 1 - .7 = .3, .7 - .6 = .1, .6 - .5 = .1
    #   A2 = .3, A1 = .1 + .5 * .3 = .25, A0 = .1 + .5 * .25 = .225
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0]]))


def test_gae_right_padding_ends_the_episode():
    # gamma=.9, lam=.8, last token masked out (its value 9 must not leak back):
    #   A1 = 2 - 1 = 1; A0 = (0 + .9 * 1 - 1) + .9 * .8 * 1 = .62
    rewards = torch.tensor([[0.0, 2.0, 5.0]])
    values = torch.tensor([[1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.62, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.62, 2.0, 0.0]]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    adv, ret = gae(rewards, values, torch.ones(3, 7), gamma=0.95, lam=1.0)
    discounted = torch.zeros_like(rewards)
    running = torch.zeros(3)
    for t in reversed(range(7)):
        running = rewards[:, t] + 0.95 * running
        discounted[:, t] = running
    torch.testing.assert_close(ret, discounted)
    torch.testing.assert_close(adv, discounted - values)


def test_masked_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_value_loss_clipped_hand_values():
    values = torch.tensor([[1.0, 2.0]])
    old = torch.tensor([[1.5, 1.5]])
    returns = torch.tensor([[0.0, 3.0]])
    mask = torch.ones(1, 2)
    # token 0: (1-0)^2 = 1 vs clipped V = 1.3 -> 1.69; token 1: (2-3)^2 = 1 vs V = 1.7 -> 1.69
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.69)
    assert stats["value_clip_frac"].item() == 1.0
    loss, _ = value_loss(values, old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.5 * 1.0)
