"""Conversations shared by the chat-rendering tests (not a test module: imported by
tests/test_conversation_render.py and tests/test_conversation_smollm2.py), so every chat format (fastgpt's
special tokens, its exported template, a ChatML template, SmolLM2's real template) is held to the same
inputs."""

from fastgpt.conversation import calculator_call, python_call, tool_call

# No tool calls: one question and answer; a system prompt over two turns with non-ASCII text; blank and
# whitespace-only content.
PLAIN_CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi! Who are you?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass? ünïcödé 日本"},
        {"role": "assistant", "content": "Green."},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "  spaces  \n and newlines\n"},
        {"role": "assistant", "content": ""},
    ],
]

# Several tools in one conversation, one call per assistant message (fastgpt's format runs one per
# message): python (name + code over two lines), the calculator (written bare in fastgpt's format) and a
# client's own tool (name + JSON arguments), each output, and the final reply.
MULTI_TOOL = [
    {"role": "user", "content": "How many r's in strawberry, times 7? And the weather?"},
    {
        "role": "assistant",
        "content": "Counting:",
        "tool_calls": [python_call('s = "strawberry"\ns.count("r")')],
    },
    {"role": "tool", "content": "3"},
    {"role": "assistant", "content": " Now times 7:", "tool_calls": [calculator_call("3*7")]},
    {"role": "tool", "content": "21"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [tool_call("get_weather", {"city": "Paris", "days": 2})],
    },
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": " 21, and sunny."},
]

# Two calls in one turn and their two outputs, after a python call: the ChatML tool syntax allows it
# (fastgpt's own format runs one call per message).
PARALLEL_CALLS = [
    {"role": "user", "content": "r's in strawberry? weather?"},
    {"role": "assistant", "content": "Counting.", "tool_calls": [python_call('"strawberry".count("r")')]},
    {"role": "tool", "content": "3"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [calculator_call("3*7"), tool_call("get_weather", {"city": "Paris"})],
    },
    {"role": "tool", "content": "21"},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "3 r's; 21; sunny."},
]
