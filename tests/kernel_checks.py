"""The closeness check of the kernel tests (not a test module: imported by tests/test_kernel_*.py).

A kernel and its reference both compute in fp32 and round once, so they may differ by fp32 roundoff plus
a rounding step each side: ``tol`` relative to each element and, for elements near zero, to the largest
magnitude in the expected tensor (each test module says how it picks ``tol`` per dtype).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """``actual`` equals ``expected`` within ``tol`` relative and ``tol`` times the largest magnitude of
    ``expected`` absolute; a failure names ``what``."""
    scale = expected.detach().float().abs().max().item()
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=tol, atol=tol * max(scale, 1e-6), msg=lambda m: f"{what}: {m}"
    )


def assert_results_close(tol: Mapping[torch.dtype, float], dtype: torch.dtype, **results: tuple) -> None:
    """Each ``name=(actual, expected)`` pair: ``actual`` has ``dtype`` and is within ``tol[dtype]`` of
    ``expected`` (:func:`assert_scaled_close`); a failure names the pair."""
    for what, (actual, expected) in results.items():
        assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
        assert_scaled_close(actual, expected, tol[dtype], what)
