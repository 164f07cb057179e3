"""Launch recorder: which Triton kernel specialisations a run really launches, and whether the ahead-of-time
build check (``python -m fastgpt.kernels.build_check``) compiles each of them for sm_80 and sm_90.

``with recording() as launches: <one training step>`` wraps the ``run`` method of every ``@triton.jit``
kernel defined in a ``fastgpt.kernels.<op>`` module (``kernel[grid](...)`` calls ``kernel.run``, the same
on a GPU and under the interpreter), so no launch site can be missed, and appends one :class:`Launch` per
distinct specialisation: kernel, argument types (pointer dtypes, ``i32``/``i64``/``fp32`` scalars),
constexprs, ``num_warps``/``num_stages`` (Triton's defaults, 4 and 3, when the launcher passes none).

What an interpreter run launches is not always what a GPU launches: attention picks its tiles per arch
(``tile_configs(head_dim, arch)``) and upcasts bf16 only under the interpreter. Each launch therefore also
carries ``per_arch``: the specialisation the GPU of that arch would launch for the same call, computed by
the kernel module's ``aot_gpu_launch(launch, arch)`` when it defines one (identity otherwise; ``None``
means the GPU would not launch this kernel at all, e.g. fp32 attention, which CUDA routes to SDPA).

:func:`missing_from_aot` lists the per-arch specialisations that no ``AOT_CONFIGS`` entry compiles. The
match ignores ``tt.divisibility`` hints (the AOT configs assume the aligned shapes of real models, a test's
tiny shapes are not) and Triton's specialisation of integer arguments equal to 1.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import pkgutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import fastgpt.kernels as package

ARCHS = (80, 90)
DEFAULT_NUM_WARPS = 4  # triton's CUDAOptions defaults: what a launch without the keyword compiles with
DEFAULT_NUM_STAGES = 3
_NOT_KERNEL_MODULES = {"build_check"}
_TORCH_TO_TRITON = {
    "torch.bfloat16": "bf16",
    "torch.float16": "fp16",
    "torch.float32": "fp32",
    "torch.float64": "fp64",
    "torch.int64": "i64",
    "torch.int32": "i32",
    "torch.int16": "i16",
    "torch.int8": "i8",
    "torch.uint8": "u8",
    "torch.bool": "i1",
}


@dataclass(frozen=True)
class Launch:
    """One kernel specialisation: what Triton compiles once and reuses for every launch like it."""

    module: str  # "norms", "attention", ...
    kernel: str  # the @triton.jit function's name
    signature: tuple[tuple[str, str], ...]  # (argument, "*bf16" | "i32" | "fp32" | "constexpr" ...)
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int = DEFAULT_NUM_WARPS
    num_stages: int = DEFAULT_NUM_STAGES
    # the same call on a GPU of each arch (None: not launched there); not part of the identity
    per_arch: tuple[tuple[int, Launch | None], ...] = field(default=(), compare=False)

    def describe(self) -> str:
        pointers = sorted({t[1:] for _, t in self.signature if t.startswith("*")})
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        return (
            f"{self.module}.{self.kernel}[{'/'.join(pointers)} {consts} "
            f"num_warps={self.num_warps} num_stages={self.num_stages}]"
        )

    def key(self) -> tuple:
        return (self.module, self.kernel, self.signature, self.constexprs, self.num_warps, self.num_stages)


# ------------------------------------------------------------------------------------------- recording
def kernel_modules() -> list[str]:
    """Every ``fastgpt.kernels.<op>`` module (the ones the build check compiles)."""
    return [
        f"fastgpt.kernels.{m.name}"
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in _NOT_KERNEL_MODULES
    ]


def _is_kernel(value: Any) -> bool:
    from triton.runtime.jit import KernelInterface  # heavy, optional: triton (GPU builds)

    return isinstance(value, KernelInterface) and hasattr(value, "arg_names") and hasattr(value, "fn")


def _constexpr_names(kernel: Any) -> set[str]:
    """Arguments annotated ``tl.constexpr`` (the JIT and the interpreter agree on the annotation)."""
    names = set()
    for name, param in inspect.signature(kernel.fn).parameters.items():
        annotation = param.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        if "constexpr" in str(text):
            names.add(name)
    return names


def _arg_type(value: Any) -> str:
    """The type Triton's launcher gives a runtime argument (as the AOT signatures spell it)."""
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return "*" + _TORCH_TO_TRITON.get(str(value.dtype), str(value.dtype))
    if type(value).__name__ == "TensorDescriptor":  # host TMA descriptor: Triton's own spelling
        from triton.runtime.jit import mangle_type  # heavy, optional: triton (GPU builds)

        return mangle_type(value)
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if value is None:
        return "none"
    return type(value).__name__


class _State:
    """The active recorders and the kernels whose ``run`` is wrapped (installed once, removed when the
    last recorder exits)."""

    lock = threading.RLock()
    recorders: list[dict] = []
    wrapped: dict[int, Any] = {}  # id(kernel) -> kernel


def _record(module: str, kernel: Any, constexpr_names: set[str], args: tuple, kwargs: dict) -> None:
    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in kernel.arg_names})
    signature, constexprs = [], []
    for name in kernel.arg_names:
        if name in constexpr_names:
            signature.append((name, "constexpr"))
            constexprs.append((name, values.get(name)))
        else:
            signature.append((name, _arg_type(values.get(name))))
    launch = Launch(
        module=module,
        kernel=kernel.fn.__name__,
        signature=tuple(signature),
        constexprs=tuple(constexprs),
        num_warps=int(kwargs.get("num_warps") or DEFAULT_NUM_WARPS),
        num_stages=int(kwargs.get("num_stages") or DEFAULT_NUM_STAGES),
    )
    translate = getattr(importlib.import_module(f"fastgpt.kernels.{module}"), "aot_gpu_launch", None)
    per_arch = tuple((arch, translate(launch, arch) if translate else launch) for arch in ARCHS)
    launch = replace(launch, per_arch=per_arch)
    with _State.lock:
        for recorder in _State.recorders:
            if launch.key() not in recorder:
                recorder[launch.key()] = launch


def _wrap(module: str, kernel: Any) -> None:
    original = kernel.run  # the bound method of the class
    names = _constexpr_names(kernel)

    @functools.wraps(original)
    def run(*args, grid, warmup, **kwargs):
        if not warmup:
            _record(module, kernel, names, args, kwargs)
        return original(*args, grid=grid, warmup=warmup, **kwargs)

    kernel.run = run  # instance attribute: shadows the class's run for `kernel[grid](...)` only
    _State.wrapped[id(kernel)] = kernel


def _install() -> None:
    for name in kernel_modules():
        module = importlib.import_module(name)
        short = name.rsplit(".", 1)[-1]
        for value in vars(module).values():
            if _is_kernel(value) and value.fn.__module__ == name and id(value) not in _State.wrapped:
                _wrap(short, value)


def _uninstall() -> None:
    for kernel in _State.wrapped.values():
        kernel.__dict__.pop("run", None)
    _State.wrapped.clear()


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Record every fastgpt Triton kernel specialisation launched inside the block, in first-launch order.

    The yielded list is filled when the block exits. Recorders nest (each sees every launch inside it).
    Works on a GPU and under the interpreter; the kernels run exactly as without the recorder.
    """
    launches: list[Launch] = []
    recorder: dict = {}
    with _State.lock:
        if not _State.recorders:
            _install()
        _State.recorders.append(recorder)
    try:
        yield launches
    finally:
        with _State.lock:
            _State.recorders.remove(recorder)
            if not _State.recorders:
                _uninstall()
        launches.extend(recorder.values())


# ------------------------------------------------------------------------------------- the AOT check
def aot_key(module: str, cfg: dict) -> tuple:
    """The :meth:`Launch.key` of one ``AOT_CONFIGS`` entry (what the build check compiles)."""
    fn = cfg["fn"]
    kernel = getattr(fn, "fn", fn).__name__
    signature = tuple((arg, cfg["signature"][arg]) for arg in fn.arg_names)
    constexprs = tuple((arg, cfg["constexprs"][arg]) for arg in fn.arg_names if arg in cfg["constexprs"])
    return (
        module,
        kernel,
        signature,
        constexprs,
        cfg.get("num_warps", DEFAULT_NUM_WARPS),
        cfg.get("num_stages", DEFAULT_NUM_STAGES),
    )


def compiled_keys(arch: int) -> set[tuple]:
    """Keys of every AOT config the build check compiles for ``arch``."""
    keys = set()
    for name in kernel_modules():
        module = importlib.import_module(name)
        short = name.rsplit(".", 1)[-1]
        for cfg in getattr(module, "AOT_CONFIGS", None) or []:
            if not cfg.get("archs") or arch in cfg["archs"]:
                keys.add(aot_key(short, cfg))
    return keys


def missing_from_aot(launches: list[Launch], archs: tuple[int, ...] = ARCHS) -> list[str]:
    """``"sm_90 norms._rms_norm_fwd_kernel[fp32 ...]"`` for every GPU specialisation of ``launches`` that
    no ``AOT_CONFIGS`` entry compiles (empty: the build check covers the run)."""
    missing = []
    for arch in archs:
        compiled = compiled_keys(arch)
        for launch in launches:
            gpu = dict(launch.per_arch).get(arch, launch)
            if gpu is not None and gpu.key() not in compiled:
                missing.append(f"sm_{arch} {gpu.describe()}")
    return sorted(set(missing))
