"""Triton kernels for fastgpt, installed as ``fastgpt.kernels``.

One file per op. Each file holds the Triton kernel(s), the ``torch.autograd.Function`` that launches
them, and the plain-torch reference the kernel must match. Model code never imports this package
directly: it calls :mod:`fastgpt.ops`, which picks the kernel or the reference.
"""
