"""What runs is what is compiled: the launch recorder (``fastgpt.kernels._launches``) and the check that
every kernel specialisation a training step launches is in some ``AOT_CONFIGS`` (what
``python -m fastgpt.kernels.build_check`` compiles for sm_80 and sm_90).

Under the interpreter the runs use bf16 autocast as a GPU run would (``--dtype=auto`` is bf16 on GPUs), so
the recorded dtypes are the GPU's: bf16 matmul outputs (attention, rope, SwiGLU, logits) and the fp32
residual stream through the norms. Attention's tiles are translated per arch by
``attention.aot_gpu_launch`` (the interpreter runs its own small tiles).
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastgpt.kernels import attention, build_check, norms
from fastgpt.kernels._launches import ARCHS, Launch, _is_kernel, kernel_modules, missing_from_aot, recording

from fastgpt import ops


def _device() -> torch.device:
    return torch.empty(0).device  # the tests' device (conftest: cpu under the interpreter, or cuda)


def _by_kernel(launches: list[Launch], kernel: str) -> list[Launch]:
    return [launch for launch in launches if launch.kernel == kernel]


def test_recorder_records_each_specialisation_once_with_its_dtypes_and_options():
    x32 = torch.randn(5, 48)
    w = torch.randn(48)
    with recording() as outer:
        norms.rms_norm_triton(x32, w)
        with recording() as inner:
            norms.rms_norm_triton(x32 * 2, w)  # the same specialisation again
            norms.rms_norm_triton(x32.bfloat16(), w.bfloat16())
    assert "run" not in norms._rms_norm_fwd_kernel.__dict__  # the wrapper is gone after the last exit
    assert len(inner) == 2 and len(outer) == 2
    fp32, bf16 = _by_kernel(outer, "_rms_norm_fwd_kernel")
    cfg = norms.norm_block_config(48)
    signature = dict(fp32.signature)
    assert signature["X"] == "*fp32" and signature["RSTD"] == "*fp32" and signature["eps"] == "fp32"
    assert signature["n_rows"] == "i32" and signature["BLOCK_H"] == "constexpr"
    assert dict(bf16.signature)["X"] == "*bf16" and dict(bf16.signature)["RSTD"] == "*fp32"
    assert dict(fp32.constexprs) == {"BLOCK_M": cfg.block_m, "BLOCK_H": cfg.block_h, "HAS_RESIDUAL": False}
    assert fp32.num_warps == cfg.forward_warps and fp32.num_stages == 3  # triton's default stages
    assert dict(fp32.per_arch) == {80: fp32, 90: fp32}  # norms pick the same tiles on every arch
    with recording() as none:
        pass
    assert none == []


def test_missing_from_aot_names_what_the_build_check_does_not_compile():
    with recording() as launches:
        norms.rms_norm_triton(torch.randn(3, 64), torch.randn(64))
    (launch,) = launches
    assert missing_from_aot(launches) == []  # fp32 norms: what bf16 autocast training launches
    odd = replace(launch, num_warps=3)
    odd = replace(odd, per_arch=((80, odd), (90, odd)))
    assert missing_from_aot([odd]) == [f"sm_{arch} {odd.describe()}" for arch in ARCHS]
    odd_dtype = replace(launch, signature=tuple((k, "*fp64" if k == "X" else t) for k, t in launch.signature))
    assert len(missing_from_aot([replace(odd_dtype, per_arch=((90, odd_dtype),))], archs=(90,))) == 1


def test_attention_launches_carry_each_arch_tiles_and_fp32_is_not_a_gpu_launch():
    B, H, T, D = 1, 2, 40, 64
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    doc_ids = torch.zeros(B, T, dtype=torch.int32)
    doc_ids[:, 17:] = 1
    with recording() as launches:
        attention.attention_triton(q, k, v, doc_ids=doc_ids).float().sum().backward()
    kernels = {launch.kernel for launch in launches}
    assert kernels == {
        "_attn_fwd_kernel",
        "_attn_bwd_preprocess_kernel",
        "_attn_bwd_dkdv_kernel",
        "_attn_bwd_dq_kernel",
    }
    roles = {"_attn_fwd_kernel": "fwd", "_attn_bwd_dkdv_kernel": "bwd_dkdv", "_attn_bwd_dq_kernel": "bwd_dq"}
    for launch in launches:
        for arch, gpu in launch.per_arch:
            consts = dict(gpu.constexprs)
            if launch.kernel in roles:
                tile = attention.tile_configs(D, f"sm{arch}")[roles[launch.kernel]]
                assert (consts["BLOCK_M"], consts["BLOCK_N"]) == (tile.block_m, tile.block_n)
                assert (gpu.num_warps, gpu.num_stages) == (tile.num_warps, tile.num_stages)
                assert consts["UPCAST"] is False and consts["HAS_DOCS"] is True
    assert missing_from_aot(launches) == []

    if _device().type == "cpu":  # fp32 attention runs only under the interpreter
        with recording() as fp32:
            attention.attention_triton(q.detach().float(), k.detach().float(), v.detach().float())
        assert [dict(launch.per_arch) for launch in fp32] == [{80: None, 90: None}]
        assert missing_from_aot(fp32) == []


def _tiny_step(preset: str, **overrides) -> list[Launch]:
    """One bf16-autocast forward + backward of a 1-layer model on packed documents, Triton kernels."""
    from fastgpt.model import GPT, GPTConfig

    cfg = GPTConfig.from_preset(
        preset, vocab_size=300, n_layer=1, n_head=2, n_embd=64, max_seq_len=64, **overrides
    )
    model = GPT(cfg)
    idx = torch.randint(0, 300, (2, 24))
    doc_ids = torch.zeros(2, 24, dtype=torch.int32)
    doc_ids[:, 9:] = 1
    with ops.use_backend("triton"), recording() as launches:
        with torch.autocast(_device().type, dtype=torch.bfloat16):
            loss = model(idx, idx, doc_ids=doc_ids)
        loss.backward()
    return launches


def test_a_bf16_training_step_launches_only_compiled_kernels():
    """llama family (RMSNorm, RoPE, SwiGLU, packed-document attention, linear CE) and gpt2 (LayerNorm,
    GELU): the norms run on the fp32 residual stream, everything after a matmul in bf16."""
    llama = _tiny_step("tiny", n_kv_head=1)
    gpt2 = _tiny_step("gpt2")
    assert missing_from_aot(llama) == [] and missing_from_aot(gpt2) == []
    kernels = {launch.kernel for launch in llama + gpt2}
    assert {"_rms_norm_fwd_kernel", "_rope_kernel", "_attn_bwd_dq_kernel", "_swiglu_bwd_kernel"} <= kernels
    assert {"_layer_norm_bwd_kernel", "_gelu_tanh_fwd_kernel", "_cross_entropy_kernel"} <= kernels
    norm_inputs = {dict(launch.signature)["X"] for launch in llama + gpt2 if "norm" in launch.kernel}
    assert norm_inputs == {"*fp32"}
    ce = {dict(launch.signature)["LOGITS"] for launch in _by_kernel(llama, "_cross_entropy_kernel")}
    assert ce == {"*bf16"}


def test_every_triton_kernel_is_compiled_by_the_build_check():
    """Each ``@triton.jit`` function of the kernel modules is in some ``AOT_CONFIGS`` entry, or is a device
    function called from one that is (inlined into it): a new kernel without AOT configs would launch on a
    GPU without ever having been built here. The build check compiles the modules the recorder wraps."""
    assert build_check.discover_modules() == kernel_modules()
    jitted, compiled = {}, {}
    for name in kernel_modules():
        module = importlib.import_module(name)
        for entry in getattr(module, "AOT_CONFIGS", []):
            compiled[entry["fn"].fn.__name__] = entry["fn"]
        for value in vars(module).values():
            if _is_kernel(value) and value.fn.__module__ == name:
                jitted[value.fn.__name__] = value
    assert {"_attn_fwd_kernel", "_decode_split_kernel", "_decode_combine_kernel"} <= set(compiled)
    called = " ".join(inspect.getsource(kernel.fn) for kernel in compiled.values())
    helpers = {name for name in jitted.keys() - compiled.keys() if f"{name}(" in called}
    assert sorted(jitted.keys() - compiled.keys() - helpers) == []


# ------------------------------------------------------------------------------ the stages, one step each
def _pretrain(tmp_path: Path) -> int:
    from train_support import make_corpus, pretrain_args

    from fastgpt.pretrain import main

    corpus = make_corpus(tmp_path / "corpus", n_docs=60)
    return main(pretrain_args(corpus, tmp_path / "pre", max_steps=1, dtype="bf16", sample_tokens=2))


def _sft(tmp_path: Path) -> int:
    from fastgpt.rl.toy import tiny_model_dir
    from fastgpt.sft import main

    base = tiny_model_dir(tmp_path / "base")
    return main(
        [f"--model={base}", f"--out_dir={tmp_path / 'sft'}", "--data=identity", "--max_steps=1"]
        + ["--batch_size=2", "--seq_len=160", "--eval_every=0", "--progress=false", "--dtype=bf16"]
        + ["--sample_tokens=2"]
    )


def _grpo(tmp_path: Path) -> int:
    from fastgpt.grpo import main
    from fastgpt.rl.toy import tiny_model_dir

    base = tiny_model_dir(tmp_path / "base")
    task = tmp_path / "task.jsonl"
    lines = [json.dumps({"prompt": f"Say some digits ({i}).", "answer": i % 10}) for i in range(12)]
    task.write_text("\n".join(lines) + "\n")
    return main(
        [f"--model={base}", f"--task={task}", "--reward=fastgpt.rl.toy:digit_fraction", "--group_size=2"]
        + ["--prompts_per_step=2", "--max_new_tokens=3", "--dtype=bf16", "--progress=false"]
        + ["--eval_problems=0", "--max_steps=1", "--beta=0.04", f"--out_dir={tmp_path / 'grpo'}"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage", [_pretrain, _sft, _grpo], ids=["pretrain", "sft", "grpo"])
def test_one_step_of_each_stage_launches_only_compiled_kernels(stage, tmp_path):
    """``FASTGPT_KERNELS=triton`` (here ``ops.use_backend``), ``--dtype=bf16``: one optimizer step with
    everything around it (evaluation, sampling, rollouts, the reference model's log-probabilities)."""
    with ops.use_backend("triton"), recording() as launches:
        assert stage(tmp_path) == 0
    assert missing_from_aot(launches) == []
    kernels = {launch.kernel for launch in launches}
    assert {
        "_attn_fwd_kernel",
        "_attn_bwd_dq_kernel",
        "_rms_norm_bwd_kernel",
        "_cross_entropy_kernel",
    } <= kernels
    if stage is _pretrain:  # packed documents
        assert any(dict(x.constexprs).get("HAS_DOCS") for x in _by_kernel(launches, "_attn_bwd_dkdv_kernel"))
    if stage is _grpo:  # rollouts decode through the split-KV kernel
        assert {"_decode_split_kernel", "_decode_combine_kernel"} <= kernels
