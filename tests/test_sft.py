"""SFT: the masked loss against a direct computation, packing against padding (same loss), resumable
and rank-split batches, the default model dir, and a tiny end-to-end run on the shared loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from fastgpt.conversation import SpecialTokenFormat
from fastgpt.model import GPT, GPTConfig
from fastgpt.sft import default_model_dir, main, sft_loss
from fastgpt.sft_data.arithmetic import arithmetic_conversations
from fastgpt.sft_data.batching import SFTBatches, collate, render_examples
from fastgpt.sft_data.identity import identity_conversations
from fastgpt.tokenizer import Tokenizer

SEQ = 128


@pytest.fixture(scope="module")
def tok():
    convs = identity_conversations(40) + arithmetic_conversations(40)
    text = " ".join(m["content"] for c in convs for m in c)
    return Tokenizer.train([text], vocab_size=400)


@pytest.fixture(scope="module")
def examples(tok):
    convs = identity_conversations(8, seed=1) + arithmetic_conversations(4, seed=1)
    return render_examples(convs, SpecialTokenFormat(tok), SEQ)


def tiny(tok) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(
        "tiny", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, max_seq_len=2 * SEQ
    )
    return GPT(cfg).eval()


def test_masked_loss_is_cross_entropy_on_assistant_tokens_only(tok):
    fmt = SpecialTokenFormat(tok)
    conv = arithmetic_conversations(1, seed=5)[0]
    ids, mask = fmt.render(conv)
    assert len(ids) <= 2 * SEQ
    model = tiny(tok)
    batch = collate([render_examples([conv], fmt, 2 * SEQ)])
    with torch.no_grad():
        got = sft_loss(model, batch)
        logits = model(torch.tensor([ids[:-1]]))[0]  # (T, V)
    trained = torch.tensor(mask[1:], dtype=torch.bool)  # target t+1 is trained when its mask is 1
    expected = F.cross_entropy(logits[trained], torch.tensor(ids[1:])[trained], reduction="sum")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert int(trained.sum()) == int((batch["targets"] != -100).sum())


def test_packed_rows_give_the_same_loss_as_padded_rows(tok, examples):
    model = tiny(tok)
    padded = collate([[e] for e in examples])
    stream = SFTBatches(examples, batch_size=64, seq_len=SEQ, pack=True, seed=0)
    rows, used = [], 0
    for e in examples:  # pack exactly these examples, in order
        if not rows or used + len(e) > SEQ:
            rows.append([])
            used = 0
        rows[-1].append(e)
        used += len(e)
    packed = collate(rows, width=SEQ)
    assert len(rows) < len(examples) and int(packed["doc_ids"].max()) > 1  # really packed
    with torch.no_grad():
        loss_padded, loss_packed = sft_loss(model, padded), sft_loss(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-3)
    assert int((packed["targets"] != -100).sum()) == int((padded["targets"] != -100).sum())
    batch = stream.next_batch()  # the packing iterator fills rows of seq_len with whole examples
    assert batch["inputs"].shape == (64, SEQ)
    for b in range(64):
        docs = batch["doc_ids"][b]
        assert torch.equal(batch["position_ids"][b][docs == 1], torch.arange(int((docs == 1).sum())))


@pytest.mark.parametrize("pack", [False, True])
def test_batches_resume_exactly_and_split_across_ranks(examples, pack):
    one = SFTBatches(examples, batch_size=4, seq_len=SEQ, pack=pack, seed=3)
    for _ in range(7):  # crosses an epoch boundary
        one.next_batch()
    state = one.state_dict()
    expected = one.next_batch()
    resumed = SFTBatches(examples, batch_size=4, seq_len=SEQ, pack=pack, seed=3)
    resumed.load_state_dict(state)
    got = resumed.next_batch()
    for k in expected:
        assert torch.equal(got[k], expected[k])
    # two ranks with half the rows each see exactly the one-rank global batch
    ranks = [
        SFTBatches(examples, batch_size=2, seq_len=SEQ, pack=pack, seed=3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    whole = SFTBatches(examples, batch_size=4, seq_len=SEQ, pack=pack, seed=3).next_global_rows()
    parts = [r.next_global_rows() for r in ranks]
    assert parts[0] == parts[1] == whole
    b0 = ranks[0].next_batch()
    assert b0["inputs"].shape[0] == 2


def test_unrenderable_conversations_say_why_and_strict_refuses_them(tok):
    """A valid OpenAI conversation fastgpt's format cannot render (two tool calls in one message: the
    engine runs each call as it is written) is dropped with its reason in the summary (it was a bare
    count), and is an error under --strict."""
    from fastgpt.conversation import ConversationError
    from fastgpt.sft_data.batching import RenderStats

    weather = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
                for city in ("Paris", "Rome")
            ],
        },
        {"role": "tool", "content": "18 C"},
        {"role": "tool", "content": "25 C"},
        {"role": "assistant", "content": "It is 18 C."},
    ]
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    stats = RenderStats()
    assert len(render_examples([ok, weather], SpecialTokenFormat(tok), SEQ, stats)) == 1
    assert stats.dropped_unrenderable == 1
    assert stats.summary().endswith(
        ", 1 unrenderable (first reasons: the conversation starting 'Weather in Paris?': message 1: "
        "fastgpt's format runs one tool call per message)"
    )
    with pytest.raises(ConversationError, match="starting 'Weather in Paris\\?': message 1: .*one tool call"):
        render_examples([ok, weather], SpecialTokenFormat(tok), SEQ, strict=True)


def test_default_model_dir_is_the_newest_pretraining_output(tmp_path):
    for name, stage in (("pre_a", "pretrain"), ("sft_b", "sft"), ("pre_c", "pretrain")):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
        (tmp_path / name / "config.json").write_text(json.dumps({"stage": stage}))
    assert default_model_dir(tmp_path) == tmp_path / "pre_c" / "model"
    with pytest.raises(FileNotFoundError, match="launch/pretrain.sh"):
        default_model_dir(tmp_path / "nothing")


def test_tiny_sft_run_on_the_shared_loop(tok, tmp_path, capsys):
    base = tmp_path / "base"
    tiny(tok).save_pretrained(base)
    tok.save(base)
    out = tmp_path / "sft"
    args = [
        f"--model={base}",
        f"--out_dir={out}",
        "--data=identity,unknown",
        "--max_steps=3",
        "--batch_size=4",
    ]
    args += [
        "--seq_len=96",
        "--eval_every=2",
        "--progress=false",
        "--dtype=fp32",
        "--sample_tokens=8",
        "--log_every=1",
    ]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert any("val_loss" in m for m in metrics)
    assert (out / "model" / "chat_template.jinja").is_file() and (out / "model" / "tokenizer.json").is_file()
    log = capsys.readouterr().out
    assert "Hi! Who are you?" in log and "kept" in log
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "sft" and config["init_from"] == str(base)
