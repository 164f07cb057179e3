"""Reading user text sources: formats, globs, options, and one clear error per bad input."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastgpt.data.errors import DataError
from fastgpt.data.sources import ReadOptions, ReadStats, expand_sources, iter_documents


def _docs(sources, **options):
    stats = ReadStats()
    return list(iter_documents(expand_sources(sources), ReadOptions(**options), stats)), stats


def test_txt_per_file_and_per_block(tmp_path):
    (tmp_path / "a.txt").write_text("First para\nline two\n\n\nSecond para\n  \n\t\nThird\n")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"Only doc"))
    docs, stats = _docs(tmp_path)
    assert docs == ["First para\nline two\n\n\nSecond para\n  \n\t\nThird\n", "Only doc"]
    assert stats.files == 2 and stats.documents == 2
    docs, _ = _docs(tmp_path / "a.txt", txt_mode="blocks")
    assert docs == ["First para\nline two", "Second para", "Third"]


def test_jsonl_field_and_empty_records(tmp_path):
    lines = [{"text": "one"}, {"text": "   "}, {"body": "x", "text": "two"}, {"text": "three", "n": 3}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    docs, stats = _docs(tmp_path / "d.jsonl")
    assert docs == ["one", "two", "three"] and stats.empty_documents == 1
    (tmp_path / "e.jsonl").write_text(json.dumps({"content": "alt"}) + "\n")
    assert _docs(tmp_path / "e.jsonl", text_field="content")[0] == ["alt"]


def test_parquet_column(tmp_path):
    table = pa.table({"id": [1, 2, 3], "content": ["alpha", "", "gamma"]})
    pq.write_table(table, tmp_path / "t.parquet")
    docs, stats = _docs(tmp_path / "t.parquet", text_field="content")
    assert docs == ["alpha", "gamma"] and stats.empty_documents == 1
    with pytest.raises(DataError, match=r"t.parquet: no column 'text' \(columns: id, content\)"):
        _docs(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="column 'id' has type int64, expected strings"):
        _docs(tmp_path / "t.parquet", text_field="id")


def test_globs_and_dirs_are_sorted(tmp_path):
    for name in ["b.txt", "a.txt", "sub/c.txt", "skip.md"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert _docs(str(tmp_path / "*.txt"))[0] == ["a.txt", "b.txt"]
    assert _docs(str(tmp_path / "**" / "*.txt"))[0] == ["a.txt", "b.txt", "sub/c.txt"]
    assert _docs(tmp_path)[0] == ["a.txt", "b.txt", "sub/c.txt"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café olé".encode("latin-1") + " ok \ufffd".encode())  # 2 bad bytes + a real U+FFFD
    with pytest.warns(UnicodeWarning, match=r"latin1.txt: 2 invalid UTF-8 .* convert it first, e.g. iconv"):
        docs, stats = _docs(path)
    assert docs == ["caf\ufffd ol\ufffd ok \ufffd"]
    assert stats.invalid_utf8 == 2 and stats.files_with_invalid_utf8 == [str(path)]


def test_empty_files_in_a_dir_or_glob_are_skipped(tmp_path):
    """A user's folder with an empty or whitespace-only file among good ones: those files are skipped,
    listed and warned about; the run does not fail. A folder / glob with no text at all still fails."""
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "blank.txt").write_text(" \r\n\n ")
    with pytest.warns(UserWarning, match=r"empty.txt: contains no text .*; skipped"):
        docs, stats = _docs(tmp_path)
    assert docs == ["alpha"] and stats.files == 3 and stats.documents == 1
    assert stats.empty_files == [str(tmp_path / "empty.txt"), str(tmp_path / "sub" / "blank.txt")]
    with pytest.warns(UserWarning):
        assert _docs(str(tmp_path / "**" / "*.txt"))[0] == ["alpha"]
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"none of its 3 file\(s\) contains text"), pytest.warns(UserWarning):
        _docs(tmp_path)
    with pytest.raises(DataError, match="empty.txt: contains no text"):  # named on its own: an error
        _docs(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "", "empty.txt: contains no text"),
        ("blank.txt", " \n\t\n ", "blank.txt: contains no text"),
        ("blank.jsonl", '{"text": "  "}\n', "blank.jsonl: contains no text"),
        ("bad.jsonl", '{"text": "ok"}\n{not json}\n', r"bad.jsonl:2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list.jsonl:1: expected a JSON object with a 'text' field, got list"),
        (
            "nofield.jsonl",
            '{"body": "x"}\n',
            r"nofield.jsonl:1: no 'text' field \(fields: body\); pick one with --text_field$",
        ),
        ("num.jsonl", '{"text": 5}\n', r"num.jsonl:1: field 'text' is int, expected a string"),
        ("notes.md", "hello", r"notes.md: unsupported file type"),
        ("bad.parquet", "not parquet", "bad.parquet: not a readable parquet file"),
    ],
)
def test_bad_sources(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        _docs(path)


def test_missing_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or directory, and not a built-in corpus"):
        expand_sources(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="the pattern matches no"):
        expand_sources(str(tmp_path / "*.jsonl"))
    with pytest.raises(DataError, match="no .txt, .txt.gz, .jsonl"):
        expand_sources(tmp_path)
    with pytest.raises(DataError, match="no sources given"):
        expand_sources([])


def test_hf_source_needs_datasets():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"hf:some/dataset: .*pip install datasets"):
            _docs("hf:some/dataset")
    else:  # installed: offline, the Hub cannot be reached, which must also be one clear error
        with pytest.raises(DataError, match="hf:some/dataset"):
            _docs("hf:some/dataset")
