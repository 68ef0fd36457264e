"""Generate stage: seeded samples from an exported model, written as samples.json, cached by key.

The model artifact is a randomly initialized debug model exported the way the
pretrain stage exports one (`trainer.checkpoint.export_final` + generation.json), so
these tests need no training run.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from kiln.errors import KilnError
from model import Llama, get_preset
from model.tokenizer import Tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.generate import GenerateConfig, generate
from tasks.tokenizer import TokenizerConfig, train_tokenizer
from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact
from trainer.checkpoint import export_final, load_final


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, ArtifactRef, ArtifactRef]:
    """A store with a 400-piece tokenizer and a 'pretrain' artifact holding a random debug model for it."""
    store = open_store(tmp_path_factory.mktemp("generate-store"))
    docs = make_docs_artifact(store, load_enwiki_docs(max_chars=2000, limit=30), n_shards=1)
    tok_ref = train_tokenizer(docs, TokenizerConfig(vocab_size=400), store)
    tok = Tokenizer.load(tok_ref.path)

    def work(build: Build) -> None:
        torch.manual_seed(0)
        model = Llama(get_preset("debug", vocab_size=tok.model_vocab_size))
        final = export_final(model.state_dict(), model.cfg, build.dir / "final")
        atomic_write_text(final / "generation.json", json.dumps({"prompt_prefix": [tok.eos_id]}))

    return store, store.produce("pretrain", "test", {"random": 0}, [tok_ref], work), tok_ref


def samples(ref: ArtifactRef) -> list[dict]:
    return json.loads((ref.path / "samples.json").read_text())


def test_writes_seeded_samples(refs) -> None:
    store, model_ref, tok_ref = refs
    cfg = GenerateConfig(prompt="The history of", max_new_tokens=12, num_samples=3, seed=5)
    out = samples(generate(model_ref, tok_ref, cfg, store))
    assert [s["seed"] for s in out] == [5, 6, 7]
    for s in out:
        assert s["prompt"] == "The history of"
        assert s["text"].startswith("The history of") and s["text"].endswith(s["completion"])
        assert 1 <= s["new_tokens"] <= 12
    assert len({s["completion"] for s in out}) > 1  # different seeds, different text


def test_same_config_same_text_and_cached(refs, tmp_path) -> None:
    store, model_ref, tok_ref = refs
    cfg = GenerateConfig(max_new_tokens=8, temperature=1.0, top_k=None, top_p=0.9)
    first = generate(model_ref, tok_ref, cfg, store)
    assert generate(model_ref, tok_ref, cfg, store) == first  # cached by key
    again = generate(model_ref, tok_ref, cfg, open_store(tmp_path))  # recomputed elsewhere
    assert samples(again) == samples(first)


def test_greedy_matches_the_model_argmax(refs) -> None:
    store, model_ref, tok_ref = refs
    out = samples(generate(model_ref, tok_ref, GenerateConfig(prompt="Paris is", temperature=0.0,
                                                              max_new_tokens=4), store))[0]
    tok = Tokenizer.load(tok_ref.path)
    model, _ = load_final(model_ref.path / "final")
    ids = [tok.eos_id, *tok.encode("Paris is")]
    for _ in range(out["new_tokens"]):
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert tok.decode(ids[1:]) == out["text"]


def test_bad_requests_are_clear_errors(refs) -> None:
    store, model_ref, tok_ref = refs
    with pytest.raises(KilnError, match="max_seq_len"):
        generate(model_ref, tok_ref, GenerateConfig(max_new_tokens=500), store)
    with pytest.raises(KilnError, match="generate.top_p"):
        GenerateConfig(top_p=1.5)
    with pytest.raises(KilnError, match="no exported model"):
        generate(tok_ref, tok_ref, GenerateConfig(), store)


def test_kiln_generate_refuses_damaged_weights_in_one_line(refs, tmp_path, capsys) -> None:
    import shutil

    from cli.main import main

    _, model_ref, tok_ref = refs
    copy = tmp_path / "pretrain"
    shutil.copytree(model_ref.path, copy)
    shutil.copytree(tok_ref.path, tmp_path / "tokenizer")  # found beside the model
    assert main(["generate", str(copy), "Hello", "--max-new-tokens", "2"]) == 0
    weights = copy / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["generate", str(copy), "Hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("kiln: error: ")
    assert re.search(r"final/model\.safetensors: (content )?does not match", err), err


def test_kiln_generate_checks_the_artifact_manifest_too(refs, tmp_path, capsys) -> None:
    """Weights rewritten together with their checksums.json still differ from the store's manifest."""
    import shutil

    from cli.main import main
    from model.integrity import write_checksums

    _, model_ref, tok_ref = refs
    store_dir = tmp_path / "store" / "pretrain"
    copy = store_dir / model_ref.key
    shutil.copytree(model_ref.path, copy)
    shutil.copytree(tok_ref.path, tmp_path / "store" / "pretrain" / "tokenizer")  # found beside the model
    final = copy / "final"
    data = bytearray((final / "model.safetensors").read_bytes())
    data[-100] ^= 0x01
    (final / "model.safetensors").write_bytes(bytes(data))
    write_checksums(final, ["model.safetensors", "config.json"])  # a consistent tamper of the model dir
    for path in (copy, final):
        capsys.readouterr()
        assert main(["generate", str(path), "Hello", "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("kiln: error: ") and "final/" in err
