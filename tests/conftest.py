"""Shared test fixtures: real sample data from the gensim wheel and an isolated Prefect home.

Prefect settings are fixed before anything imports Prefect, so every test (and
every subprocess a test starts) uses one temporary Prefect home with a generous
ephemeral-server start-up timeout instead of the user's ~/.prefect.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="kiln-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

GENSIM_DATA = "test/test_data"
ENWIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BGWIKI_SAMPLE = "bgwiki-latest-pages-articles-shortened.xml.bz2"
REPO_ROOT = Path(__file__).resolve().parents[1]


def gensim_file(name: str) -> Path:
    """Path of a data file shipped in the gensim wheel (installed by the `test` extra)."""
    path = Path(str(importlib.resources.files("gensim").joinpath(f"{GENSIM_DATA}/{name}")))
    if not path.is_file():
        pytest.fail(f"{path} missing: install the test extra (pip install -e '.[test]')")
    return path


@pytest.fixture(scope="session")
def enwiki_sample() -> Path:
    """The real enwiki dump sample (206 pages) that gensim ships."""
    return gensim_file(ENWIKI_SAMPLE)


@pytest.fixture(scope="session")
def bgwiki_sample() -> Path:
    """The real Bulgarian Wikipedia dump sample that gensim ships."""
    return gensim_file(BGWIKI_SAMPLE)


@pytest.fixture
def store(tmp_path: Path):
    """An empty artifact store in a temporary directory."""
    from storage.store import open_store

    return open_store(tmp_path / "artifacts")


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory whose filesystem keeps holes, for shards of > 2**32 tokens that take ~no disk
    (`tests.storage.sparse_shards`): `tmp_path`, else one in /dev/shm; the test skips if neither does."""
    from tests.storage.sparse_shards import keeps_holes

    if keeps_holes(tmp_path):
        yield tmp_path
        return
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and keeps_holes(shm):
        with tempfile.TemporaryDirectory(dir=shm, prefix="kiln-sparse-") as d:
            yield Path(d)
        return
    pytest.skip(f"neither {tmp_path} nor /dev/shm keeps sparse files: a > 2**32-token shard would take 8+ GB")


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tokenizer artifact, trained once per session: a 1000-piece BPE with the chat tokens
    <|im_start|>/<|im_end|> on real wiki text (the SFT, DPO, loop and HF export tests share it)."""
    from storage.store import open_store
    from tasks.tokenizer import TokenizerConfig, train_tokenizer
    from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact

    store = open_store(tmp_path_factory.getbasetemp() / "chat-tokenizer")
    docs = make_docs_artifact(store, load_enwiki_docs(max_chars=3000, limit=80), n_shards=1)
    return train_tokenizer(docs, TokenizerConfig(vocab_size=1000), store).path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API of one Prefect server shared by the end-to-end `kiln run`s (why: tests/prefect_server.py)."""
    from tests.prefect_server import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as (api, _):
        yield api
