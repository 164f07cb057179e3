"""Evaluation against independent references: bits per byte of a uniform predictor (log2 V bits per token
over the decoded text's bytes) and of a random model (materialised logits), pass@k by enumerating
subsets, multiple-choice log-likelihoods against one unbatched forward per choice, task accuracy with a
scripted model whose right answers are known, and the ``fastgpt eval`` command end to end."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from fastgpt.data import ShardLoader, resolve_pretrain_data
from fastgpt.engine import Engine
from fastgpt.eval.bpb import bits_per_byte, evaluate_bpb
from fastgpt.eval.cli import main as eval_main
from fastgpt.eval.cli import parse_tasks
from fastgpt.eval.multiple_choice import MCError, MCItem, choice_logprobs, evaluate_mc, load_mc, score_items
from fastgpt.eval.tasks import evaluate_task, pass_at_k
from fastgpt.model import GPT, GPTConfig
from fastgpt.tasks import get_task
from fastgpt.tokenizer import Tokenizer

TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "
    "What is 12 plus 7? The answer is 19. Café, naïve, über. "
)
ASCII = TEXT.replace("Café, naïve, über. ", "")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT * 30], vocab_size=300)


def tiny_gpt(vocab_size: int, seq_len: int = 64) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=seq_len
    )
    return GPT(config).eval()


@pytest.fixture(scope="module")
def data_dir(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    docs = root / "docs"
    docs.mkdir()
    for i in range(40):
        # ASCII text: a token's bytes are then exactly the bytes of its own decoded text
        (docs / f"doc{i:02d}.txt").write_text(f"Document {i}. " + ASCII * (1 + i % 3), encoding="utf-8")
    data, _ = resolve_pretrain_data(
        str(docs), tokenizer, val_fraction=0.25, cache_dir=root / "cache", progress=False, workers=1
    )
    return data


# ------------------------------------------------------------------------------------------ bits per byte
def test_uniform_predictor_costs_log2_vocab_bits_per_token(tokenizer, data_dir):
    model = tiny_gpt(tokenizer.vocab_size)
    with torch.no_grad():
        model.lm_head_weight.zero_()  # every logit 0: uniform over the vocabulary
    batches = list(ShardLoader(data_dir, "val", batch_size=8, seq_len=32).eval_batches(1000))
    result = bits_per_byte(model, batches, tokenizer.token_byte_lengths())
    special = set(tokenizer.special_tokens.values())
    scored = [t for _, targets, _ in batches for t in targets.flatten().tolist() if t not in special]
    text_bytes = sum(len(tokenizer.decode([t]).encode("utf-8")) for t in scored)
    assert result["tokens"] == len(scored) and result["bytes"] == text_bytes
    assert result["bpb"] == pytest.approx(
        len(scored) * math.log2(tokenizer.vocab_size) / text_bytes, rel=1e-5
    )
    assert result["loss"] == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-5)


def test_bpb_of_a_random_model_matches_materialised_logits(tokenizer, data_dir):
    model = tiny_gpt(tokenizer.vocab_size)
    result = evaluate_bpb(model, tokenizer, str(data_dir), max_tokens=1500, seq_len=48, batch_size=3)
    lengths = torch.as_tensor(tokenizer.token_byte_lengths(), dtype=torch.long)
    nats = nbytes = 0.0
    for inputs, targets, doc_ids in ShardLoader(data_dir, "val", batch_size=3, seq_len=48).eval_batches(1500):
        with torch.no_grad():
            logp = F.log_softmax(model(inputs, doc_ids=doc_ids), dim=-1)  # (B, T, V)
        keep = lengths[targets] > 0
        nats -= logp.gather(-1, targets[..., None])[..., 0][keep].sum().item()
        nbytes += lengths[targets].sum().item()
    assert result["bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-4)
    assert result["seq_len"] == 48


def test_bpb_budget_smaller_than_the_context_scores_one_window_of_it(tokenizer, data_dir):
    # SmolLM2 has an 8192-token context: `--bpb_tokens 4096` must score 4096 tokens, not fail for want of
    # a full 8192-token window
    model = tiny_gpt(tokenizer.vocab_size, seq_len=4096)
    result = evaluate_bpb(model, tokenizer, str(data_dir), max_tokens=200, batch_size=3)
    assert result["seq_len"] == 200 and 0 < result["tokens"] <= 200
    assert result == evaluate_bpb(model, tokenizer, str(data_dir), max_tokens=200, seq_len=200, batch_size=3)


# ------------------------------------------------------------------------------------------ pass@k
@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (4, 4, 4), (7, 1, 5)])
def test_pass_at_k_is_the_chance_a_k_subset_has_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


# ------------------------------------------------------------------------------------------ multiple choice
def test_choice_logprobs_match_one_forward_per_choice(tokenizer):
    model = tiny_gpt(tokenizer.vocab_size, seq_len=40)
    pairs = [
        (tokenizer.encode("Shall I compare thee", add_bos=True), tokenizer.encode(" to a summer's day")),
        (tokenizer.encode("What is 12", add_bos=True), tokenizer.encode(" plus")),
        ([tokenizer.bos_id], tokenizer.encode("Café")),
        (tokenizer.encode(TEXT * 3, add_bos=True), tokenizer.encode(" more lovely")),  # cut to the context
    ]
    got = choice_logprobs(model, pairs, batch_rows=3)
    for (context, choice), value in zip(pairs, got):
        seq = (context + choice)[-41:]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0], dim=-1)
        ref = sum(logp[len(seq) - len(choice) - 1 + i, t].item() for i, t in enumerate(choice))
        assert value == pytest.approx(ref, abs=1e-4)


def test_mc_accuracy_follows_the_likelihoods(tokenizer):
    model = tiny_gpt(tokenizer.vocab_size)
    items = [
        MCItem("Shall I compare thee to a summer's", (" day", " night", " rose"), 0, "cloze"),
        MCItem("What is 12 plus 7?", ("19", "20", "Thou art"), 0, "question"),
        MCItem("Thou art more lovely and more", (" temperate", " lovely", " über"), 0, "cloze"),
    ]
    best, worst = [], []
    for item in items:  # the reference: each choice scored on its own (question items as base prompts)
        context = (
            tokenizer.encode(f"Question: {item.prompt}\nAnswer:", add_bos=True)
            if item.style == "question"
            else tokenizer.encode(item.prompt, add_bos=True)
        )
        prefix = " " if item.style == "question" else ""
        scores = choice_logprobs(
            model, [(context, tokenizer.encode(prefix + c)) for c in item.choices], batch_rows=1
        )
        best.append(max(range(3), key=scores.__getitem__))
        worst.append(min(range(3), key=scores.__getitem__))
    right = [MCItem(i.prompt, i.choices, b, i.style) for i, b in zip(items, best)]
    wrong = [MCItem(i.prompt, i.choices, w, i.style) for i, w in zip(items, worst)]
    assert evaluate_mc(model, tokenizer, right)["acc"] == 1.0
    assert evaluate_mc(model, tokenizer, wrong)["acc"] == 0.0
    assert evaluate_mc(model, tokenizer, right)["chance"] == pytest.approx(1 / 3)


def test_mc_scores_match_transformers_on_the_saved_model(tokenizer, tmp_path):
    """The saved model dir read by transformers (as lm-evaluation-harness reads it), each choice scored
    the harness's way: ``Question: ...\nAnswer:`` then `` choice``, BOS first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_gpt(tokenizer.vocab_size, seq_len=64).save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    _, items = load_mc("basics")
    items = items[:3]
    ours = score_items(tiny_gpt(tokenizer.vocab_size, seq_len=64), tokenizer, items)
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    for item, scores in zip(items, ours):
        context = [
            hf_tok.bos_token_id,
            *hf_tok.encode(f"Question: {item.prompt}\nAnswer:", add_special_tokens=False),
        ]
        for choice, score in zip(item.choices, scores):
            cont = hf_tok.encode(" " + choice, add_special_tokens=False)
            with torch.no_grad():
                logits = hf_model(torch.tensor([context + cont])).logits[0]
            logp = F.log_softmax(logits.float(), -1)
            ref = sum(logp[len(context) - 1 + i, t].item() for i, t in enumerate(cont))
            assert score == pytest.approx(ref, abs=1e-3)


def test_mc_builtin_sets_and_file_errors(tmp_path):
    for name in ("shakespeare", "basics"):
        _, items = load_mc(name)
        assert len(items) >= 40 and all(0 <= i.answer < len(i.choices) for i in items)
        assert len({i.answer for i in items}) > 1  # the right answer is not always in one place
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": "4"}) + "\n")
    assert load_mc(str(good))[1] == [MCItem("2+2?", ("3", "4"), 1, "question")]
    cases = {
        '{"question": "q", "choices": ["a"], "answer": 0}': "choices",
        '{"question": "q", "choices": ["a", "b"], "answer": 2}': "answer",
        '{"question": "q", "choices": ["a", "b"], "answer": "c"}': "answer",
        '{"choices": ["a", "b"], "answer": 0}': "question",
        "[1, 2]": "object",
        "{oops": "JSON",
    }
    for line, field in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "answer": 0}) + "\n" + line + "\n")
        with pytest.raises(MCError, match=rf"bad.jsonl:2: .*{field}"):
            load_mc(str(bad))


# ------------------------------------------------------------------------------------------ task accuracy
class ArithmeticScript(torch.nn.Module):
    """A real tiny GPT whose reply is dictated: to "What is A plus B?" it answers ``#### A+B`` when A is
    even and ``#### A+B+1`` when A is odd, then stops. The expected accuracy is known in advance."""

    def __init__(self, inner: GPT, tokenizer: Tokenizer, stop_id: int):
        super().__init__()
        self.inner, self.config, self.tok, self.stop_id = inner, inner.config, tokenizer, stop_id
        self.rows: list[tuple[list[int], int]] = []  # per row: (reply tokens to write, tokens written)

    def forward(self, idx, *, doc_ids=None, **kwargs):
        logits = self.inner(idx, doc_ids=doc_ids, **kwargs)
        if idx.size(1) > 1:  # prefill: read each row's question once
            self.rows = []
            for b in range(idx.size(0)):
                a, c = map(
                    int, re.findall(r"What is (\d+) plus (\d+)\?", self.tok.decode(idx[b].tolist()))[-1]
                )
                self.rows.append((self.tok.encode(f" #### {a + c + a % 2}") + [self.stop_id], 0))
        else:  # a decode step: each row's previous token was fed
            if idx.size(0) > len(self.rows):  # each prompt's prefill is shared by its n samples
                n = idx.size(0) // len(self.rows)
                self.rows = [row for row in self.rows for _ in range(n)]
            elif idx.size(0) < len(self.rows):  # continuous batching dropped the rows that stopped
                self.rows = [(target, done) for target, done in self.rows if done < len(target) - 1]
            assert len(self.rows) == idx.size(0), (len(self.rows), idx.size(0))
            self.rows = [(target, done + 1) for target, done in self.rows]
        for b, (target, done) in enumerate(self.rows):
            logits[b, -1] = -1e9
            logits[b, -1, target[min(done, len(target) - 1)]] = 1e9
        return logits


def test_task_accuracy_greedy_and_pass_at_k(tokenizer, tmp_path):
    problems = [{"prompt": f"What is {a} plus {b}?", "answer": a + b} for a in range(1, 13) for b in (3, 8)]
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    task = get_task(str(path), heldout_fraction=0.5)
    heldout = task.split("heldout", 8)
    expected = sum(int(re.search(r"What is (\d+)", p.question).group(1)) % 2 == 0 for p in heldout) / len(
        heldout
    )
    assert 0 < expected < 1
    engine = Engine(tiny_gpt(tokenizer.vocab_size, seq_len=256), tokenizer)
    engine.model = ArithmeticScript(engine.model, tokenizer, tokenizer.token_id("<|assistant_end|>"))
    result = evaluate_task(
        engine, task, chat=True, problems=8, max_new_tokens=12, batch_size=4, k=2, samples=2
    )
    assert result["problems"] == len(heldout)
    assert result["greedy_accuracy"] == pytest.approx(expected)
    assert result["pass@2"] == pytest.approx(expected)  # the script is deterministic: samples agree
    assert result["examples"][0]["completion"].startswith(" #### ")


def test_a_small_jsonl_task_scores_every_line_with_heldout_fraction_1(tokenizer, tmp_path):
    """Two questions: by hash neither is held out by default, and the error says how to score them all."""
    path = tmp_path / "two.jsonl"
    path.write_text(
        '{"prompt": "What is 2 plus 3?", "answer": 5}\n{"prompt": "What is 4 plus 3?", "answer": 7}\n'
    )
    engine = Engine(tiny_gpt(tokenizer.vocab_size, seq_len=256), tokenizer)
    default = get_task(str(path))
    assert default.split("heldout") == []  # the hash of both keys falls outside the default 10 %
    with pytest.raises(ValueError, match="""--task_options '{"heldout_fraction": 1}'"""):
        evaluate_task(engine, default, chat=True, problems=5, max_new_tokens=2)
    result = evaluate_task(
        engine, get_task(str(path), heldout_fraction=1), chat=True, problems=5, max_new_tokens=2
    )
    assert result["problems"] == 2


class LetterCountToolScript(torch.nn.Module):
    """A real tiny GPT whose reply is dictated by the tokens fed so far: it calls the Python tool on the
    letter-count question's code, then answers ``#### `` + whatever the tool printed. Without the tool
    run, the reply ends at the call (no answer); with it, every answer is right."""

    def __init__(self, inner: GPT, tokenizer: Tokenizer):
        from fastgpt.conversation import SpecialTokenFormat

        super().__init__()
        self.inner, self.config, self.tok = inner, inner.config, tokenizer
        self.fmt = SpecialTokenFormat(tokenizer)
        self.history: list[int] = []

    def forward(self, idx, *, doc_ids=None, **kwargs):
        assert idx.size(0) == 1, "one row at a time (batch_size=1)"
        logits = self.inner(idx, doc_ids=doc_ids, **kwargs)
        self.history = idx[0].tolist() if idx.size(1) > 1 else self.history + idx[0].tolist()
        fmt, enc = self.fmt, self.tok.encode
        start = len(self.history) - self.history[::-1].index(fmt.ids["assistant"][0])
        reply = self.history[start:]
        if fmt.tool_output_end_id in reply:
            out_start, out_end = reply.index(fmt.tool_output_start_id), reply.index(fmt.tool_output_end_id)
            planned = enc("#### ") + reply[out_start + 1 : out_end] + [fmt.ids["assistant"][1]]
            nxt = planned[len(reply) - out_end - 1]
        elif fmt.tool_call_end_id in reply:
            nxt = 0  # the engine feeds the tool output now
        else:
            letter, word = re.findall(
                r'letter "(\w)" appear in the word "(\w+)"', self.tok.decode(self.history)
            )[-1]
            call = [
                fmt.tool_call_start_id,
                *enc(f'python\nprint("{word}".count("{letter}"))'),
                fmt.tool_call_end_id,
            ]
            nxt = call[len(reply)]
        logits[0, -1] = -1e9
        logits[0, -1, nxt] = 1e9
        return logits


def test_jagged_task_with_and_without_the_python_tool(tokenizer):
    task = get_task("jagged_letter_count")
    engine = Engine(tiny_gpt(tokenizer.vocab_size, seq_len=512), tokenizer)
    engine.model = LetterCountToolScript(engine.model, tokenizer)
    result = evaluate_task(
        engine, task, chat=True, problems=3, max_new_tokens=60, batch_size=1, compare_tools=("python",)
    )
    assert result["greedy_accuracy"] == 0.0  # without tools the call is handed back: no answer
    c = result["tools_comparison"]
    assert c["tools"] == ["python"] and c["without_tools"] == 0.0
    assert c["with_tools"] == 1.0 and c["tool_call_share"] == 1.0
    assert c["examples"][0]["completion"].startswith("#### ")
    # the main pass with tools: the comparison's other pass runs none
    result = evaluate_task(
        engine,
        task,
        chat=True,
        problems=3,
        max_new_tokens=60,
        batch_size=1,
        tools=["python"],
        compare_tools=("python",),
    )
    assert result["greedy_accuracy"] == 1.0
    assert (
        result["tools_comparison"]["without_tools"] == 0.0 and result["tools_comparison"]["with_tools"] == 1.0
    )


def test_a_task_with_fewer_held_out_problems_than_asked_scores_all_it_has(tokenizer):
    from fastgpt.tasks.base import in_heldout

    task = get_task("jagged_reverse")
    keys = {p.key for p in itertools.islice(task.candidates(), 20_000)}
    held = {k for k in keys if in_heldout(k, task.heldout_fraction)}
    assert 0 < len(held) < 100
    engine = Engine(tiny_gpt(tokenizer.vocab_size, seq_len=256), tokenizer)
    result = evaluate_task(engine, task, chat=True, problems=100, max_new_tokens=2, compare_tools=())
    assert result["problems"] == len(held)


# ------------------------------------------------------------------------------------------ the command
def test_bpb_default_data_is_the_pretraining_data_behind_a_later_stage(tmp_path):
    # `fastgpt eval --model out/sft/model --tasks bpb` read the SFT run's own --data (its conversation
    # mixture) as a text corpus and stopped: "chatterbot,identity,...: no such file or directory"
    from fastgpt.eval.cli import training_data_of

    def run(name, **config):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return str(tmp_path / name / "model")

    pre = run("pretrain", stage="pretrain", data="corpus/*.txt", init_from="")
    sft = run("sft", stage="sft", data="chatterbot,identity,unknown,arithmetic", init_from=pre)
    dpo = run("dpo", stage="dpo", data="gsm_symbolic_pairs", init_from=sft)
    orphan = run("orphan", stage="sft", data="chatterbot", init_from=str(tmp_path / "gone" / "model"))
    assert training_data_of(pre) == "corpus/*.txt"
    assert training_data_of(sft) == "corpus/*.txt" and training_data_of(dpo) == "corpus/*.txt"
    assert training_data_of(orphan) is None  # eval then falls back to the built-in shakespeare
    assert training_data_of(tmp_path / "nothing" / "model") is None


def test_parse_tasks():
    assert parse_tasks("bpb, chain_sum ,mc:basics,mc:x.jsonl") == [
        ("bpb", "bpb"),
        ("task", "chain_sum"),
        ("mc", "basics"),
        ("mc", "x.jsonl"),
    ]
    with pytest.raises(ValueError):
        parse_tasks("mc:")


def test_eval_command_end_to_end(tokenizer, data_dir, tmp_path, capsys):
    model_dir = tmp_path / "run" / "model"
    tiny_gpt(tokenizer.vocab_size, seq_len=256).save_pretrained(model_dir)
    tokenizer.save(model_dir)
    problems = tmp_path / "sums.jsonl"
    problems.write_text(
        "".join(json.dumps({"prompt": f"What is {a} plus 2?", "answer": a + 2}) + "\n" for a in range(40))
    )
    out = tmp_path / "eval.json"
    argv = ["--model", str(model_dir), "--data", str(data_dir), "--bpb_tokens", "1000", "--out", str(out)]
    mc = tmp_path / "quiz.jsonl"
    mc.write_text(json.dumps({"question": "What is 12 plus 7?", "choices": ["19", "20"], "answer": 0}) + "\n")
    argv += [
        "--tasks",
        f"bpb,mc:{mc},{problems}",
        "--problems",
        "3",
        "--max_new_tokens",
        "4",
        "--chat",
        "yes",
    ]
    argv += ["--task_options", '{"match": "numeric"}']  # GRPO's --task_options reach the task
    assert eval_main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"bpb", "mc:quiz", "task:sums"}
    assert report["chat"] is True and report["results"]["mc:quiz"]["items"] == 1
    assert 0 <= report["results"]["task:sums"]["greedy_accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "| bpb" in printed and "mc:quiz" in printed and "greedy_accuracy" in printed
    assert "without tools" not in printed  # a plain task: no comparison by default
    # a jagged task on a chat model: with and without the python tool, both columns
    jagged = tmp_path / "jagged.json"
    argv = [
        "--model",
        str(model_dir),
        "--tasks",
        "jagged_word_length",
        "--problems",
        "2",
        "--max_new_tokens",
        "3",
    ]
    assert eval_main([*argv, "--chat", "yes", "--out", str(jagged)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if "without tools" in line)
    assert "with tools" in header and "replies calling a tool" in header
    row = next(
        line
        for line in printed.splitlines()
        if line.startswith("| task:jagged_word_length") and "python" in line
    )
    comparison = json.loads(jagged.read_text())["results"]["task:jagged_word_length"]["tools_comparison"]
    assert set(comparison) >= {"without_tools", "with_tools", "tool_call_share"} and "%" in row
    assert eval_main([*argv, "--chat", "yes", "--compare_tools", "none", "--out", str(jagged)]) == 0
    assert "tools_comparison" not in json.loads(jagged.read_text())["results"]["task:jagged_word_length"]
    assert eval_main(["--model", str(tmp_path / "missing")]) == 2
    for bad in ("no_such_task", "mc:no_such_set", "mc:"):
        assert eval_main(["--model", str(model_dir), "--tasks", bad]) == 2
    for options in ("{oops", "[1]", '{"no_such_option": 1}'):  # checked before the model loads
        assert (
            eval_main(["--model", str(model_dir), "--tasks", str(problems), "--task_options", options]) == 2
        )
    assert "no_such_task" in capsys.readouterr().err


def test_eval_unknown_task_names_every_kind_of_eval(tmp_path, capsys):
    assert eval_main(["--model", str(tmp_path), "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err
    assert "'mmlu'" in err and "bpb" in err and "mc:basics" in err and "chain_sum_easy" in err
