"""Tokenizer stage and `model.tokenizer.Tokenizer` on real Wikipedia text (gensim's enwiki sample)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import tasks.tokenizer as tokenizer_stage
from kiln.config import from_dict
from kiln.errors import KilnError
from model.hf_tokenizer import save_hf_tokenizer
from model.tokenizer import META_FILE, MODEL_FILE, Tokenizer, padded_vocab_size
from storage.store import ArtifactRef, ArtifactStore, artifact_key, open_store
from tasks.tokenizer import SAMPLE_FILE, TokenizerConfig, split_sentences, train_tokenizer
from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact

VOCAB = 2000
TRICKY = "Tabs\tand  double  spaces, digits 1234567, CJK 東京, emoji 😀, accents café — “quotes”.\n\nNew para."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, ArtifactRef, ArtifactRef]:
    """A store holding a real 3-shard docs artifact and a 2000-piece BPE tokenizer trained on it."""
    store = open_store(tmp_path_factory.mktemp("tok-store"))
    docs = make_docs_artifact(store, load_enwiki_docs(), n_shards=3)
    return store, docs, train_tokenizer(docs, TokenizerConfig(vocab_size=VOCAB), store)


def test_round_trips_real_articles_and_odd_text(corpus) -> None:
    _, _, ref = corpus
    tok = Tokenizer.load(ref.path)
    docs = load_enwiki_docs()
    for doc in docs:
        assert tok.decode(tok.encode(doc["text"])) == doc["text"], doc["title"]
    # Identity normalization + byte fallback: whitespace runs, unseen scripts and emoji survive exactly.
    ids = tok.encode(TRICKY)
    assert tok.decode(ids) == TRICKY
    assert tok.unk_id not in ids
    assert [tok.decode(x) for x in tok.encode_batch([d["text"] for d in docs[:5]])] == [d["text"] for d in docs[:5]]
    # Line-by-line encoding (the fast path) gives exactly SentencePiece's ids for the whole text.
    assert tok.splits_lines
    edge = ["", "\n", "\n\n", "a\n", "\n a", "😀\n😀", "  \n  \t", "<|im_end|>\n<|im_start|>", TRICKY]
    texts = [d["text"] for d in docs] + edge
    assert tok.encode_batch(texts, num_threads=2) == [tok.sp.encode(t) for t in texts]
    assert tok.encode_batch(edge, bos=True, eos=True) == [tok.sp.encode(t, add_bos=True, add_eos=True) for t in edge]
    # split_digits: every digit is its own piece.
    digit_pieces = [tok.id_to_token(i) for i in tok.encode("1234567")]
    assert all(sum(c.isdigit() for c in p) <= 1 for p in digit_pieces)


def test_special_and_chat_tokens_are_single_fixed_ids(corpus) -> None:
    _, _, ref = corpus
    tok = Tokenizer.load(ref.path)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.special_tokens == {
        "<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<|im_start|>": 4, "<|im_end|>": 5
    }
    chat = "<|im_start|>user\nWhat is an anarchist?<|im_end|>\n<|im_start|>assistant\nA person.<|im_end|>"
    ids = tok.encode(chat)
    assert ids[0] == 4 and ids.count(4) == 2 and ids.count(5) == 2
    assert tok.decode(ids) == chat
    # Glued to words on both sides, the marker still comes out whole.
    assert tok.encode("x<|im_end|>y").count(tok.token_to_id("<|im_end|>")) == 1
    assert tok.encode("hi", bos=True, eos=True)[0] == 1 and tok.encode("hi", eos=True)[-1] == 2
    with pytest.raises(KilnError, match="not in the tokenizer vocab"):
        tok.token_to_id("<|not_a_token|>")


def test_model_vocab_is_padded_and_padding_ids_decode_to_nothing(corpus) -> None:
    _, _, ref = corpus
    tok = Tokenizer.load(ref.path)
    assert tok.vocab_size == VOCAB
    assert tok.model_vocab_size == 2048 and tok.model_vocab_size % 64 == 0
    assert padded_vocab_size(64320) == 64320 and padded_vocab_size(64321) == 64384
    meta = json.loads((ref.path / META_FILE).read_text())
    assert meta["vocab_size"] == VOCAB and meta["model_vocab_size"] == 2048 and meta["pad_to_multiple_of"] == 64
    ids = tok.encode("Anarchism is a political philosophy")
    assert tok.decode(ids + [VOCAB, 2047]) == tok.decode(ids)


def test_sample_is_bounded_weighted_and_deterministic(tmp_path: Path) -> None:
    """A corpus with far more sentences than input_sentence_size trains on exactly the bound, per weight."""
    store = open_store(tmp_path / "a")
    docs = make_docs_artifact(store, load_enwiki_docs(), n_shards=2, sources=("wiki-a", "wiki-b"))
    cfg = TokenizerConfig(vocab_size=600, input_sentence_size=400, source_weights={"wiki-a": 3.0, "wiki-b": 1.0})
    ref = train_tokenizer(docs, cfg, store)
    sample = json.loads((ref.path / META_FILE).read_text())["sample"]
    assert sample["sentences_seen"] > 10 * cfg.input_sentence_size
    assert sample["sentences_sampled"] == 400
    assert sample["sampled_per_source"] == {"wiki-a": 300, "wiki-b": 100}
    assert not (ref.path / SAMPLE_FILE).exists() and SAMPLE_FILE not in store.manifest(ref)["files"]
    assert store.manifest(ref)["peak_rss_mb"] > 0
    # Same config in another store (other paths, other thread count): byte-identical model.
    other = open_store(tmp_path / "b")
    docs_b = make_docs_artifact(other, load_enwiki_docs(), n_shards=2, sources=("wiki-a", "wiki-b"))
    ref_b = train_tokenizer(docs_b, dataclasses.replace(cfg, num_threads=1), other)
    assert ref_b.key == ref.key
    assert (ref_b.path / MODEL_FILE).read_bytes() == (ref.path / MODEL_FILE).read_bytes()
    assert str(tmp_path).encode() not in (ref.path / MODEL_FILE).read_bytes()


def test_normalizing_models_encode_whole_texts(tmp_path: Path) -> None:
    """nmt_nfkc rewrites whitespace, so line-by-line encoding would not be exact: it must be off."""
    store = open_store(tmp_path)
    docs = make_docs_artifact(store, load_enwiki_docs(limit=20), n_shards=1, tag="twenty")
    cfg = TokenizerConfig(vocab_size=500, normalization_rule_name="nmt_nfkc", input_sentence_size=2000)
    tok = Tokenizer.load(train_tokenizer(docs, cfg, store).path)
    assert not tok.splits_lines
    assert tok.encode_batch(["a\u3000b\nc ｄ"]) == [tok.sp.encode("a\u3000b\nc ｄ")]


def test_unigram_trains_round_trips_and_exports(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    docs = make_docs_artifact(store, load_enwiki_docs(limit=30), n_shards=1, tag="thirty")
    cfg = TokenizerConfig(vocab_size=600, model_type="unigram", input_sentence_size=3000)
    ref = train_tokenizer(docs, cfg, store)
    tok = Tokenizer.load(ref.path)
    assert tok.meta["model_type"] == "unigram" and tok.special_tokens["<|im_end|>"] == 5
    texts = [d["text"] for d in load_enwiki_docs(limit=30)] + [TRICKY]
    assert [tok.decode(ids) for ids in tok.encode_batch(texts)] == texts
    # Unigram's result depends on its thread count, so that one is part of the key (num_threads is not).
    assert artifact_key("tokenizer", "1", dataclasses.replace(cfg, unigram_threads=1), [docs]) != ref.key
    assert artifact_key("tokenizer", "1", dataclasses.replace(cfg, num_threads=1), [docs]) == ref.key
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(save_hf_tokenizer(ref.path, tmp_path / "hf"))
    hf_ids = [hf.encode(t, add_special_tokens=False) for t in texts]
    # Viterbi ties (e.g. "=====" as "===" + "==" or "==" + "===") may break the other way in HF's unigram.
    assert sum(h == tok.encode(t) for h, t in zip(hf_ids, texts, strict=True)) >= 0.8 * len(texts)
    assert [tok.decode(h) for h in hf_ids] == texts


def test_long_lines_are_split_at_sentence_ends() -> None:
    line = "First sentence here. " * 30 + "x" * 500
    sentences, dropped = split_sentences(f"short line\n\n{line}", max_bytes=200)
    assert sentences[0] == "short line" and all(len(s.encode()) <= 200 for s in sentences)
    assert len(sentences) == 31 and dropped == 1


def test_second_call_reuses_the_artifact(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    store, docs, ref = corpus
    mtime = (ref.path / MODEL_FILE).stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the artifact exists")

    monkeypatch.setattr(tokenizer_stage, "_train_sentencepiece", no_training)
    again = train_tokenizer(docs, TokenizerConfig(vocab_size=VOCAB, num_threads=1), store)  # runtime field
    assert again == ref and (ref.path / MODEL_FILE).stat().st_mtime_ns == mtime
    assert artifact_key("tokenizer", "1", TokenizerConfig(vocab_size=VOCAB + 64), [docs]) != ref.key


def test_bad_configs_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="tokenizer.model_type"):
        TokenizerConfig(model_type="wordpiece")  # type: ignore[arg-type]
    with pytest.raises(KilnError, match="model_type"):
        from_dict(TokenizerConfig, {"model_type": "wordpiece"}, where="demo.toml", prefix="tokenizer.")
    with pytest.raises(KilnError, match="tokenizer.vocab_size"):
        TokenizerConfig(vocab_size=100)
    with pytest.raises(KilnError, match="tokenizer.normalization_rule_name"):
        TokenizerConfig(normalization_rule_name="lowercase")
    with pytest.raises(KilnError, match="tokenizer.chat_tokens"):
        TokenizerConfig(chat_tokens=("<s>",))
    store = open_store(tmp_path)
    docs = make_docs_artifact(store, load_enwiki_docs(limit=5), n_shards=1, tag="five")
    with pytest.raises(KilnError, match=r"tokenizer.vocab_size: 20000 is too large for this corpus sample"):
        train_tokenizer(docs, TokenizerConfig(vocab_size=20000, input_sentence_size=300), store)
    with pytest.raises(KilnError, match=r"tokenizer.source_weights: source\(s\) \['wiki-zz'\] not in the documents"):
        train_tokenizer(docs, TokenizerConfig(vocab_size=400, source_weights={"wiki-zz": 1.0}), store)
    empty = make_docs_artifact(store, [{"id": "e1", "text": ""}], n_shards=1, tag="empty")
    with pytest.raises(KilnError, match="no text to train a tokenizer on"):
        train_tokenizer(empty, TokenizerConfig(vocab_size=400), store)


def test_existing_model_is_copied_and_keyed_by_content(corpus, tmp_path: Path) -> None:
    store, docs, ref = corpus
    model = tmp_path / "mine.model"
    shutil.copyfile(ref.path / MODEL_FILE, model)
    copied = train_tokenizer(docs, TokenizerConfig(existing=str(model)), store)
    assert (copied.path / MODEL_FILE).read_bytes() == model.read_bytes()
    meta = json.loads((copied.path / META_FILE).read_text())
    assert meta["origin"]["existing"] == str(model) and meta["vocab_size"] == VOCAB
    assert Tokenizer.load(copied.path).encode(TRICKY) == Tokenizer.load(ref.path).encode(TRICKY)
    # An HF-style directory holding tokenizer.model works too.
    assert (train_tokenizer(docs, TokenizerConfig(existing=str(ref.path)), store).path / MODEL_FILE).is_file()
    # A different file at the same path is a different artifact.
    no_chat = train_tokenizer(docs, TokenizerConfig(vocab_size=VOCAB, chat_tokens=()), store)
    shutil.copyfile(no_chat.path / MODEL_FILE, model)
    changed = TokenizerConfig(existing=str(model), chat_tokens=())
    assert train_tokenizer(docs, changed, store).key != copied.key
    with pytest.raises(KilnError, match="has no single-id piece"):
        train_tokenizer(docs, TokenizerConfig(existing=str(model)), store)  # chat tokens missing from it
    with pytest.raises(KilnError, match="tokenizer.existing: .*nothere.model not found"):
        TokenizerConfig(existing=str(tmp_path / "nothere.model"))


def test_load_errors_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=r"tokenizer\.model: tokenizer file missing"):
        Tokenizer.load(tmp_path)


def test_hugging_face_export_matches(corpus, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    _, _, ref = corpus
    tok = Tokenizer.load(ref.path)
    hf = transformers.AutoTokenizer.from_pretrained(save_hf_tokenizer(ref.path, tmp_path / "hf"))
    chat = "<|im_start|>user\nHello  world 12345 😀<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>"
    for text in [d["text"] for d in load_enwiki_docs(limit=20)] + [TRICKY, chat]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.decode(tok.encode(chat)) == chat
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (tok.eos_id, tok.bos_id, tok.pad_id)
