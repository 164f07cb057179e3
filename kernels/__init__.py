"""Triton kernels for fastgpt, installed as ``fastgpt.kernels``.

One file per op. Each file holds the Triton kernel(s), the torch custom ops (``torch.ops.fastgpt.*``,
with fake implementations and registered autograd) that launch them, and the plain-torch reference the
kernel must match. Model code never imports this package
directly: it calls :mod:`fastgpt.ops`, which picks the kernel or the reference.
"""

if __name__ == "kernels":  # pragma: no branch
    # Python started in the repository root (``python -c``, ``python -m pytest``, a notebook) finds this
    # folder as a top-level ``kernels`` and would shadow Hugging Face's ``kernels`` package, which
    # transformers imports unconditionally when it is installed. Step aside: load the installed package
    # of that name in this module's place (the import system returns whatever ``sys.modules`` holds).
    import os as _os
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder
    from importlib.util import module_from_spec as _module_from_spec

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
    _spec = _PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = _module_from_spec(_spec)
        _sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
