"""The Transformer core against transformers (the reference implementation of both families).

Tiny random models are built with transformers inside each test (offline), saved with
``save_pretrained`` and loaded into fastgpt; logits must agree to 1e-5 in fp32.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import fastgpt
from fastgpt.model import GPT, GPTConfig, KVCache, ModelFormatError, from_pretrained

TOL = 1e-5


def hf_llama(tmp_path, **kw):
    cfg = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=160,
        tie_word_embeddings=False,
    )
    cfg.update(kw)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    model.save_pretrained(tmp_path)
    return model


def hf_gpt2(tmp_path, **kw):
    cfg = dict(vocab_size=101, n_positions=160, n_embd=64, n_layer=2, n_head=4)
    cfg.update(kw)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    model.save_pretrained(tmp_path)
    return model


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize(
    "kw",
    [
        {},  # GQA 4/2, untied, odd vocab
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ],
    ids=["gqa-untied", "mha-tied", "llama31-rope"],
)
def test_llama_logits_match_transformers(tmp_path, kw):
    ref = hf_llama(tmp_path, **kw)
    ours = from_pretrained(tmp_path)
    x = torch.randint(0, 97, (2, 130))  # longer than one 128-token attention block
    with torch.no_grad():
        assert max_diff(ref(x).logits, ours(x)) <= TOL


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_logits_match_transformers(tmp_path, tied):
    ref = hf_gpt2(tmp_path, tie_word_embeddings=tied)
    ours = from_pretrained(tmp_path)
    x = torch.randint(0, 101, (2, 130))
    with torch.no_grad():
        assert max_diff(ref(x).logits, ours(x)) <= TOL


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_pretrained_round_trip_through_transformers(tmp_path, family):
    cfg = GPTConfig(
        family=family,
        vocab_size=77,
        n_layer=2,
        n_head=4,
        n_kv_head=2 if family == "llama" else None,
        n_embd=32,
        max_seq_len=64,
        tie_embeddings=family == "gpt2",
    )
    model = GPT(cfg).eval()
    model.save_pretrained(tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    back = from_pretrained(tmp_path)
    x = torch.randint(0, 77, (3, 40))
    with torch.no_grad():
        ours = model(x)
        assert max_diff(ref(x).logits, ours) <= TOL
        assert torch.equal(back(x), ours)
    assert back.config == cfg


def test_sharded_checkpoint_loads(tmp_path):
    ref = hf_llama(tmp_path / "one")
    tensors = load_file(tmp_path / "one" / "model.safetensors")
    names = sorted(tensors)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, shard_dir / fname)
        weight_map.update({n: fname for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (shard_dir / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    x = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        assert max_diff(ref(x).logits, from_pretrained(shard_dir)(x)) <= TOL


def test_bad_model_dirs_give_clear_errors(tmp_path):
    hf_llama(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    tensors = load_file(tmp_path / "model.safetensors")

    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ModelFormatError, match="model_type 'bert' is not supported"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    missing = dict(tensors)
    del missing["model.layers.1.mlp.up_proj.weight"]
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        from_pretrained(tmp_path)

    wrong = dict(tensors)
    wrong["model.norm.weight"] = torch.ones(65)
    save_file(wrong, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError, match=r"model.norm.weight has shape \(65,\), expected \(64,\)"):
        from_pretrained(tmp_path)

    ints = dict(tensors)
    ints["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    save_file(ints, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError, match="dtype torch.int32, expected a float"):
        from_pretrained(tmp_path)

    truncated = (tmp_path / "model.safetensors").read_bytes()[:100]  # a copy cut short
    (tmp_path / "model.safetensors").write_bytes(truncated)
    with pytest.raises(ModelFormatError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(tmp_path)

    with pytest.raises(ModelFormatError, match="no config.json"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown model preset 'gpt7'"):
        GPTConfig.from_preset("gpt7")
    with pytest.raises(ValueError, match="n_kv_head: expected a divisor of n_head=4"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)


def test_a_run_dir_given_as_model_dir_names_its_model_dir(tmp_path):
    """A run's out_dir has its own config.json (the run config) and the model under model/: the
    error says where the model is instead of 'model_type None is not supported'."""
    hf_llama(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"preset": "tiny", "max_steps": 20}))
    with pytest.raises(ModelFormatError, match=r"run's config.*its model is .*run/model"):
        from_pretrained(tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(ModelFormatError, match=r"no config.json.*its model is .*run/model"):
        from_pretrained(tmp_path / "run")


def test_dtype_names_and_unusable_devices(tmp_path):
    from fastgpt.model.hf import parse_dtype

    hf_llama(tmp_path)
    for name, dtype in [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16),
                        ("float32", torch.float32), ("torch.float16", torch.float16)]:  # fmt: skip
        assert parse_dtype(name) == dtype
        assert next(from_pretrained(tmp_path, dtype=name).parameters()).dtype == dtype
    with pytest.raises(ValueError, match="dtype 'float64': expected one of float32, fp32, bfloat16"):
        from_pretrained(tmp_path, dtype="float64")
    with pytest.raises(ValueError, match="device 'gpu'"):
        from_pretrained(tmp_path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
            from_pretrained(tmp_path, device="cuda")


def test_loss_matches_manual_cross_entropy_with_ignore_index():
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, max_seq_len=16))
    x = torch.randint(0, 50, (2, 16))
    y = torch.randint(0, 50, (2, 16))
    y[0, :5] = -100
    logits = model(x)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 50), y.view(-1), ignore_index=-100)
    assert model(x, y).item() == pytest.approx(ref.item(), abs=1e-5)
    lp = model.token_logprobs(x, y)
    assert lp[0, :5].abs().max() == 0
    manual = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    assert max_diff(lp[:, 5:], manual[:, 5:]) <= 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_positions_past_max_seq_len_are_a_clear_error(family):
    model = GPT(GPTConfig(family=family, vocab_size=50, n_layer=1, n_embd=32, n_head=2, max_seq_len=8)).eval()
    model(torch.randint(0, 50, (1, 8)))  # exactly max_seq_len is fine
    with pytest.raises(ValueError, match="sequence length 9 is beyond the model's max_seq_len=8"):
        model(torch.randint(0, 50, (1, 9)))
    with pytest.raises(ValueError, match="position 8 is beyond the model's max_seq_len=8"):
        model(torch.randint(0, 50, (1, 2)), position_ids=torch.tensor([[7, 8]]))
    # packed documents restart positions, so a 9-token row of two documents fits
    doc_ids = torch.tensor([[0] * 5 + [1] * 4])
    assert model(torch.randint(0, 50, (1, 9)), doc_ids=doc_ids).shape == (1, 9, 50)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_documents_equal_separate_runs(family):
    """A row holding two documents gives each document the loss it has alone."""
    model = GPT(
        GPTConfig(family=family, vocab_size=60, n_layer=2, n_embd=32, n_head=4, max_seq_len=32)
    ).eval()
    a, b = torch.randint(0, 60, (1, 11)), torch.randint(0, 60, (1, 9))
    ta, tb = torch.randint(0, 60, (1, 11)), torch.randint(0, 60, (1, 9))
    packed = torch.cat([a, b], 1)
    targets = torch.cat([ta, tb], 1)
    doc_ids = torch.tensor([[0] * 11 + [1] * 9])
    with torch.no_grad():
        nll = model(packed, targets, doc_ids=doc_ids, loss_reduction="none")
        alone_a = model(a, ta, loss_reduction="none")
        alone_b = model(b, tb, loss_reduction="none")
    assert max_diff(nll[:, :11], alone_a) <= 1e-5
    assert max_diff(nll[:, 11:], alone_b) <= 1e-5


def test_kv_cache_greedy_equals_full_recompute():
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=64)).eval()
    prompt = torch.randint(0, 64, (2, 7))
    cached = model.generate(prompt, 20, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(cached, seq)


def test_kv_cache_left_padding_matches_unpadded():
    """Left-padded rows (padding as its own document, positions from 0 at the first real token)
    produce the logits the unpadded prompt produces."""
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=64)).eval()
    short = torch.randint(0, 64, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    position_ids = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])
    cache = KVCache(model.config, 1, 16)
    with torch.no_grad():
        out = model(padded, kv_cache=cache, doc_ids=doc_ids, position_ids=position_ids)[:, -1]
        ref = model(short)[:, -1]
        assert max_diff(out, ref) <= 1e-5
        nxt = ref.argmax(-1, keepdim=True)
        step = model(nxt, kv_cache=cache)[:, -1]  # position and document continue on their own
        assert max_diff(step, model(torch.cat([short, nxt], 1))[:, -1]) <= 1e-5
    rep = cache.repeat(3)
    assert (
        rep.k.shape[1] == 3 and rep.pos == cache.pos and torch.equal(rep.next_pos, cache.next_pos.repeat(3))
    )


def test_greedy_generate_equals_transformers(tmp_path):
    ref = hf_llama(tmp_path)
    ours = from_pretrained(tmp_path)
    prompt = torch.randint(0, 97, (2, 9))
    theirs = ref.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=25, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours.generate(prompt, 25, temperature=0), theirs)


def test_sampling_is_seeded_and_respects_top_k():
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, max_seq_len=64)).eval()
    prompt = torch.randint(0, 64, (1, 4))
    a = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    from fastgpt.model import sample_next_token

    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    draws = {int(sample_next_token(logits, 1.0, top_k=2)) for _ in range(200)}
    assert draws <= {1, 2}
    nucleus = {int(sample_next_token(logits, 1.0, top_p=0.5)) for _ in range(200)}
    assert nucleus == {1}  # token 1 alone holds > 50% of the mass


def test_param_count_and_flops_match_transformers(tmp_path):
    ref = hf_llama(tmp_path)
    ours = from_pretrained(tmp_path)
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())
    c = ours.config
    n_matmul = sum(p.numel() for n, p in ours.named_parameters() if p.ndim == 2 and not n.startswith("wte"))
    expected = 6 * n_matmul + 12 * c.n_layer * c.n_head * c.head_dim * 100
    assert ours.flops_per_token(100) == expected


def test_presets_build_and_export_at_package_top():
    assert fastgpt.GPT is GPT and fastgpt.GPTConfig is GPTConfig
    tiny = fastgpt.GPT(fastgpt.GPTConfig.from_preset("tiny"))
    assert 2e6 < tiny.num_params() < 10e6
    with torch.device("meta"):
        gpt2 = GPT(GPTConfig.from_preset("gpt2"))
    assert abs(gpt2.num_params() - 124.4e6) < 0.5e6  # OpenAI's GPT-2 small
    with torch.device("meta"):
        smol = GPT(GPTConfig.from_preset("smollm2-135m"))
    assert abs(smol.num_params() - 134.5e6) < 1e6


def test_convert_gguf_command_errors_are_one_line(tmp_path, capsys):
    from fastgpt.model.gguf import main

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    for path, expected in [(tmp_path / "missing.gguf", "no such GGUF file"), (not_gguf, "GGUF magic")]:
        assert main(["--gguf", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastgpt convert-gguf: error: ") and expected in err and err.count("\n") == 1, (
            err
        )
