"""Helpers to declare ``AOT_CONFIGS`` (see ``fastgpt/kernels/build_check.py``) without spelling out every
argument type by hand.

Convention in fastgpt's kernels: UPPER-CASE arguments are pointers, lower-case ones are ``i32`` sizes and
strides unless listed as fp32 scalars; constexprs are whatever the config fixes.

The configs carry the specialisation Triton's launcher picks for typical shapes, so the build check
compiles the code that really runs: pointers 16-byte aligned (tensors from PyTorch's allocator) and
integer sizes/strides divisible by 16 (hidden, head and vocabulary sizes of real models), except the
arguments a kernel lists as ``unaligned`` (row counts, sequence lengths, head counts, ignore_index...).
The unspecialised variants only differ in vectorisation width.
"""

from __future__ import annotations


def aot_config(
    name: str,
    fn,
    dtype: str,
    constexprs: dict,
    *,
    fp32_pointers: tuple[str, ...] = (),
    i64_pointers: tuple[str, ...] = (),
    i32_pointers: tuple[str, ...] = (),
    fp32_scalars: tuple[str, ...] = (),
    i32_scalars: tuple[str, ...] = (),
    unaligned: tuple[str, ...] = (),
    num_warps: int = 4,
    num_stages: int | None = None,
) -> dict:
    """One ``AOT_CONFIGS`` entry: ``fn``'s pointers in ``dtype`` (``"bf16"``/``"fp16"``) except those named
    fp32 (statistics, partial sums), i64 (targets) or i32 (document ids). ``i32_scalars`` names upper-case
    arguments that are integers, not pointers (``T_Q``, ``H_KV``); ``num_stages`` is recorded only when
    given (the launcher otherwise passes none and triton's default applies)."""
    pointer_types = {
        **dict.fromkeys(fp32_pointers, "*fp32"),
        **dict.fromkeys(i64_pointers, "*i64"),
        **dict.fromkeys(i32_pointers, "*i32"),
    }
    signature, attrs = {}, {}
    for index, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in fp32_scalars:
            signature[arg] = "fp32"
        elif arg.isupper() and arg not in i32_scalars:
            signature[arg] = pointer_types.get(arg, f"*{dtype}")
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if arg not in unaligned:
                attrs[(index,)] = [["tt.divisibility", 16]]
    entry = {
        "name": name,
        "fn": fn,
        "signature": signature,
        "constexprs": dict(constexprs),
        "attrs": attrs,
        "num_warps": num_warps,
    }
    if num_stages is not None:
        entry["num_stages"] = num_stages
    return entry
