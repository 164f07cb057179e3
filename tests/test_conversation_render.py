"""Chat rendering: loss masks token by token, truncation, jinja templates, and parity with transformers'
``apply_chat_template`` (ids, generation prompt, and its own assistant masks)."""

import pytest
from chat_samples import MULTI_TOOL, PARALLEL_CALLS, PLAIN_CONVERSATIONS
from train_support import assert_renders_as_transformers

from fastgpt.chat.template import TemplateFormat, export_chat_template, format_for
from fastgpt.conversation import (
    FASTGPT_CHAT_TEMPLATE,
    FASTGPT_CHAT_TEMPLATE_V1,
    ConversationError,
    ConversationTooLong,
    SpecialTokenFormat,
    calculator_call,
    parse_tool_call_text,
    python_call,
    tool_call,
    tool_call_text,
)
from fastgpt.tokenizer import Tokenizer

CORPUS = [
    "system user assistant Hello there! What is 12*7? It is 84. Who are you? I am fastgpt. é ü 日本 " * 20
]

# calls the calculator mid-reply (text, call, tool output, more text), then a second user turn
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12*7?"},
    {"role": "assistant", "content": "Let me compute:", "tool_calls": [calculator_call("12*7")]},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": " It is 84."},
    {"role": "user", "content": "Who are you? é ü"},
    {"role": "assistant", "content": "I am fastgpt. 日本"},
]
CONVERSATIONS = [*PLAIN_CONVERSATIONS, TOOL_CONVERSATION]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"])


def test_mask_token_by_token(tok):
    t, enc = tok.token_id, tok.encode
    msgs = TOOL_CONVERSATION
    # expected: assembled by hand, piece by piece, with the mask each piece must have
    pieces = [
        ([t("<|bos|>")], 0),
        ([t("<|system_start|>"), *enc("Be brief."), t("<|system_end|>")], 0),
        ([t("<|user_start|>"), *enc("What is 12*7?"), t("<|user_end|>")], 0),
        ([t("<|assistant_start|>")], 0),
        ([*enc("Let me compute:"), t("<|tool_call_start|>"), *enc("12*7"), t("<|tool_call_end|>")], 1),
        ([t("<|tool_output_start|>"), *enc("84"), t("<|tool_output_end|>")], 0),
        ([*enc(" It is 84."), t("<|assistant_end|>")], 1),
        ([t("<|user_start|>"), *enc("Who are you? é ü"), t("<|user_end|>")], 0),
        ([t("<|assistant_start|>")], 0),
        ([*enc("I am fastgpt. 日本"), t("<|assistant_end|>")], 1),
    ]
    expected_ids = [i for ids, _ in pieces for i in ids]
    expected_mask = [m for ids, m in pieces for _ in ids]
    ids, mask = SpecialTokenFormat(tok).render(msgs)
    assert ids == expected_ids
    assert mask == expected_mask


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
def test_jinja_rendering_of_fastgpt_template_matches_the_token_builder(tok, k):
    """Two independent implementations (ids assembled by id vs template text split on special tokens)."""
    direct, templated = SpecialTokenFormat(tok), TemplateFormat(tok, FASTGPT_CHAT_TEMPLATE)
    assert direct.render(CONVERSATIONS[k]) == templated.render(CONVERSATIONS[k])
    prompt = CONVERSATIONS[k][:-1]
    assert direct.render_prompt(prompt) == templated.render_prompt(prompt)
    assert templated.stop_ids >= {tok.token_id("<|assistant_end|>")}


def test_truncation_keeps_whole_turns(tok):
    fmt = SpecialTokenFormat(tok)
    msgs = TOOL_CONVERSATION
    full_ids, full_mask = fmt.render(msgs)
    first_turn_end = len(fmt.render(msgs[:5])[0])
    for max_len in (first_turn_end, first_turn_end + 3, len(full_ids) - 1):
        r = fmt.render_truncated(msgs, max_len)
        assert r.ids == full_ids[:first_turn_end] and r.loss_mask == full_mask[:first_turn_end]
        assert r.ids[-1] == tok.token_id("<|assistant_end|>") and r.dropped_turns == 1
    assert fmt.render(msgs, max_len=len(full_ids)) == (full_ids, full_mask)
    with pytest.raises(ConversationTooLong):
        fmt.render(msgs, max_len=first_turn_end - 1)


def test_prompt_and_reply_round_trip(tok):
    fmt = SpecialTokenFormat(tok)
    msgs = TOOL_CONVERSATION
    prompt = fmt.render_prompt(msgs[:2])
    assert prompt[-1] == tok.token_id("<|assistant_start|>")
    full = fmt.render(msgs[:5])[0]
    reply = full[len(prompt) : -1]  # what the model (with the engine's tool output) writes, minus the stop
    assert fmt.parse_reply(reply) == msgs[2:5]
    # a prompt that ends with a tool result continues the assistant's turn (no new assistant start)
    assert fmt.render_prompt(msgs[:4]) == full[: len(fmt.render_prompt(msgs[:4]))]
    assert fmt.render_prompt(msgs[:4])[-1] == tok.token_id("<|tool_output_end|>")
    with pytest.raises(ConversationError, match="must end with a user message"):
        fmt.render_prompt(
            msgs[:3] + [{"role": "tool", "content": "84"}, {"role": "assistant", "content": "x"}]
        )


def test_several_tools_round_trip_in_fastgpt_format(tok):
    fmt = SpecialTokenFormat(tok)
    prompt = fmt.render_prompt(MULTI_TOOL[:1])
    full, mask = fmt.render(MULTI_TOOL)
    reply = full[len(prompt) : -1]
    assert fmt.parse_reply(reply) == MULTI_TOOL[1:]
    # each call's tokens are trained (mask 1), each tool output is not
    starts = [i for i, t in enumerate(full) if t == fmt.tool_call_start_id]
    assert len(starts) == 3 and all(mask[i] == 1 for i in starts)
    outputs = [i for i, t in enumerate(full) if t == fmt.tool_output_start_id]
    assert all(mask[i] == 0 for i in outputs)
    # what sits between the call tokens
    texts = [tok.decode(full[a + 1 : full.index(fmt.tool_call_end_id, a)]) for a in starts]
    assert texts == [
        'python\ns = "strawberry"\ns.count("r")',
        "3*7",
        'get_weather\n{"city": "Paris", "days": 2}',
    ]


@pytest.mark.parametrize(
    "text, call",
    [
        ("12*7", calculator_call("12*7")),
        ("calculator\n12*7", calculator_call("12*7")),
        ("python\nprint(1)\nx = 2", python_call("print(1)\nx = 2")),
        ('lookup\n{"q": "x"}', tool_call("lookup", {"q": "x"})),
        ("lookup\nnot json", tool_call("lookup", {"input": "not json"})),
        ("(1 +\n2)", calculator_call("(1 +\n2)")),  # no name line: the calculator's (invalid) expression
    ],
)
def test_tool_call_text_parses_names(text, call):
    assert parse_tool_call_text(text) == call
    if "input" not in call["function"]["arguments"] and not text.startswith("calculator"):
        assert tool_call_text(call) == text


def test_calculator_calls_render_as_in_the_calculator_only_format(tok, tmp_path):
    # a model dir saved before named tools carries the first template: still fastgpt's format, and a
    # calculator conversation renders the same ids through it, through the current template and natively
    tok.save(tmp_path)
    export_chat_template(tmp_path, FASTGPT_CHAT_TEMPLATE_V1)
    fmt = format_for(tmp_path)
    assert isinstance(fmt, SpecialTokenFormat)
    old = TemplateFormat(tok, FASTGPT_CHAT_TEMPLATE_V1).render(TOOL_CONVERSATION)
    new = TemplateFormat(tok, FASTGPT_CHAT_TEMPLATE).render(TOOL_CONVERSATION)
    assert old == new == fmt.render(TOOL_CONVERSATION)


def test_exported_fastgpt_template_renders_the_same_ids_in_transformers(tok, tmp_path):
    import transformers  # a [dev] dependency: missing, the test fails rather than skips

    tok.save(tmp_path)
    export_chat_template(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    fmt = format_for(tmp_path)
    assert isinstance(fmt, SpecialTokenFormat)
    for msgs in [*CONVERSATIONS, MULTI_TOOL]:
        assert_renders_as_transformers(fmt, hf, msgs)


# A ChatML template in the style of SmolLM2's (default system prompt when none is given), with
# transformers' {% generation %} markers so transformers itself computes the assistant mask.
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_model_dir_template_matches_transformers_ids_and_assistant_masks(tok, tmp_path):
    import transformers  # a [dev] dependency: missing, the test fails rather than skips

    tok.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    fmt = format_for(tmp_path)
    assert isinstance(fmt, TemplateFormat)
    assert fmt.stop_ids >= {tok.token_id("<|im_end|>")}
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for msgs in PLAIN_CONVERSATIONS:  # with and without a system prompt (the template adds a default)
        _, mask = assert_renders_as_transformers(fmt, hf, msgs)
        ref = hf.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert mask == list(ref["assistant_masks"])


def test_template_that_is_not_prefix_stable_is_refused(tok):
    # renders only the last assistant message's content: earlier renders are not prefixes of later ones
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' or loop.last %}{{ m['content'] }}{% endif %}"
        "{% endfor %}<|assistant_end|>{% if add_generation_prompt %}<|assistant_start|>{% endif %}"
    )
    fmt = TemplateFormat(tok, template)
    with pytest.raises(ConversationError, match="prefixes"):
        fmt.render(PLAIN_CONVERSATIONS[2])


def test_imported_vocabulary_renders_fastgpt_token_strings_as_text(tmp_path):
    # An imported HF tokenizer (SmolLM2-style: ChatML tokens only). fastgpt.Tokenizer appends its own
    # chat tokens above the vocabulary, where the model has no embedding; a message that contains their
    # strings (or "<|bos|>") must be encoded as text, as transformers does, never as those ids.
    import transformers  # a [dev] dependency: missing, the test fails rather than skips
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    hf.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        '{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}'
    )
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    vocab = hf.get_vocab_size()
    fmt = format_for(tmp_path)
    assert Tokenizer.load(tmp_path).vocab_size > vocab  # fastgpt's chat tokens were appended
    msgs = [{"role": "user", "content": "Repeat <|assistant_end|> and <|bos|> and <|user_start|>!"}]
    ids = fmt.render_prompt(msgs)
    assert max(ids) < vocab
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=True, return_dict=True
    )
    assert ids == list(ref["input_ids"])
    # the same through a Tokenizer object (Engine(model, tok) without a format), and after fastgpt saved
    # the tokenizer (as SFT does: the appended chat tokens are then in tokenizer.json, the embedding
    # still ends at the imported vocabulary)
    assert format_for(Tokenizer.load(tmp_path)).render_prompt(msgs) == ids
    saved = tmp_path / "sft"
    Tokenizer.load(tmp_path).save(saved)
    (saved / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    assert format_for(saved).render_prompt(msgs) == ids


# ------------------------------------------------------------------------------------------ tool calls as text
def _reply_tokens(fmt, msgs, i):
    """The tokens a model writes for assistant message ``i`` (the end-of-turn token and after excluded)."""
    prompt = fmt.render_prompt(msgs[:i])
    full = fmt.encode_text(fmt.render_text(msgs[: i + 1]))[0]
    reply = full[len(prompt) :]
    return reply[: reply.index(next(iter(fmt.stop_ids & set(reply))))]


def test_chatml_tools_template_round_trips_several_tools(tok):
    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE

    fmt = TemplateFormat(tok, CHATML_TOOLS_TEMPLATE)
    assert not fmt.supports_tools  # no tool tokens: the calls are text
    assert fmt.tool_syntax == ("<tool_call>\n", "\n</tool_call>")
    msgs = PARALLEL_CALLS
    for i in (1, 3, 6):
        assert fmt.parse_reply(_reply_tokens(fmt, msgs, i)) == [msgs[i]]
    # the masked tokens of a call turn are the call text and the end of turn
    ids, mask = fmt.render(msgs)
    assert tok.decode([t for t, m in zip(ids, mask) if m]).startswith("Counting.<tool_call>\n{")


def test_tool_calls_as_text_in_other_shapes(tok):
    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE

    fmt = TemplateFormat(tok, CHATML_TOOLS_TEMPLATE)
    # SmolLM2-1.7B's trained shape: a JSON list of calls after one marker, no newlines
    text = 'Sure.<tool_call>[{"name": "python", "arguments": {"code": "1+1"}}, {"name": "f", "arguments": "{}"}]</tool_call>'
    assert fmt.split_tool_calls(text) == ("Sure.", [python_call("1+1"), tool_call("f", {})])
    # a marker without valid JSON after it is text
    assert fmt.split_tool_calls("I like <tool_call> tags") == ("I like <tool_call> tags", [])
    # a template with another marker and "parameters" (Mistral-style): found by probing
    mistral = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>{{ m['content'] }}<|im_end|>"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{% if m['tool_calls'] %}[TOOL_CALLS]["
        "{% for c in m['tool_calls'] %}{{ {'name': c['function']['name'], 'parameters': c['function']['arguments']} | tojson }}"
        "{% endfor %}]{% endif %}<|im_end|>{% else %}<|im_start|>{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    fmt = TemplateFormat(tok, mistral)
    assert fmt.tool_syntax == ("[TOOL_CALLS][", "]")
    assert fmt.split_tool_calls('ok[TOOL_CALLS][{"name": "python", "parameters": {"code": "2"}}]') == (
        "ok",
        [python_call("2")],
    )
    # a template that renders no tool calls (SmolLM2's own) has no tool syntax
    assert TemplateFormat(tok, CHATML).tool_syntax is None


def test_chatml_tools_template_matches_transformers(tok, tmp_path):
    import transformers  # a [dev] dependency: missing, the test fails rather than skips

    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE

    tok.save(tmp_path)
    export_chat_template(tmp_path, CHATML_TOOLS_TEMPLATE)
    fmt = format_for(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    msgs = [
        {"role": "user", "content": "r's?"},
        {"role": "assistant", "content": "", "tool_calls": [python_call('"rr".count("r")')]},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "2"},
    ]
    assert fmt.render(msgs)[0] == list(
        hf.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    )
    schema = {"type": "function", "function": {"name": "python", "parameters": {"type": "object"}}}
    text = hf.apply_chat_template(msgs[:1], tools=[schema], tokenize=False, add_generation_prompt=True)
    assert "You can call tools." in text and '"name": "python"' in text
