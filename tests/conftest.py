"""Shared test fixtures: real sample data from the gensim wheel and an isolated Prefect home.

Prefect settings are fixed before anything imports Prefect, so every test (and
every subprocess a test starts) uses one temporary Prefect home with a generous
ephemeral-server start-up timeout instead of the user's ~/.prefect.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
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
