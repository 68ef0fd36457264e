"""Tokenizer stage: train a SentencePiece model on a bounded sample of the clean documents.

    ref = train_tokenizer(docs_ref, TokenizerConfig(vocab_size=2000), open_store())

SentencePiece loads every input sentence into memory, and users hit OOM at
hundreds of GB on big corpora. So memory here is bounded by the sample size, not
the corpus: documents stream shard by shard, are split into lines/sentences, and
a seeded reservoir keeps at most `input_sentence_size` of them (per source,
according to `source_weights`). The sample goes to a temporary file in the build
directory, SentencePiece trains on it (its own `input_sentence_size` cap is a
second guard) and the file is deleted. Peak RSS and timings land in the manifest.

Artifact: ``tokenizer.model``, ``tokenizer.vocab``, ``tokenizer_meta.json`` (see
`model.tokenizer`). With `existing` set, the stage copies that model instead of
training; the file's sha256 is part of the config, so a changed file reruns.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm

from kiln.config import path_field, runtime_field
from kiln.errors import KilnError
from model.sp_proto import proto_fields, special_pieces, strip_machine_fields
from model.tokenizer import (
    BOS,
    BOS_ID,
    EOS,
    EOS_ID,
    META_FILE,
    MODEL_FILE,
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    VOCAB_FILE,
    load_sentencepiece,
    padded_vocab_size,
)
from storage.atomic import atomic_write_bytes, atomic_write_text
from storage.documents import doc_shards, iter_documents
from storage.store import ArtifactRef, ArtifactStore, Build, open_store, sha256_file
from tasks.stage import Stage, reported

STAGE = "tokenizer"

NORMALIZATIONS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")
SAMPLE_FILE = ".sample.txt"
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


@dataclass(frozen=True)
class TokenizerConfig:
    """How to build the tokenizer (``[tokenizer]`` in a pipeline config)."""

    vocab_size: int = 8000
    """Real SentencePiece vocab size (the demo uses ~2000); the model pads it to `pad_to_multiple_of`."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece algorithm."""
    byte_fallback: bool = True
    """Unknown characters become UTF-8 byte pieces instead of <unk>, so any text round-trips."""
    split_digits: bool = True
    """Every digit is its own piece (better arithmetic, as in Llama)."""
    character_coverage: float = 0.9995
    """Share of characters covered by pieces; rarer ones fall back to bytes."""
    normalization_rule_name: str = "identity"
    """"identity" keeps text byte-exact (decode(encode(t)) == t); nmt_nfkc etc. normalize Unicode first."""
    max_sentence_length: int = 4192
    """Longest training sentence in bytes; longer lines are split at sentence ends, leftovers dropped."""
    input_sentence_size: int = 2_000_000
    """Most sentences sampled for training (bounds memory; 1–10 M suffice even for huge corpora)."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Share of the sample per document source; empty = proportional to each source's sentences.
    Sources not listed are left out of the sample."""
    seed: int = 0
    """Seed of the reservoir sample (and of SentencePiece's own shuffling)."""
    pad_to_multiple_of: int = 64
    """model_vocab_size = vocab_size rounded up to this (tensor-core friendly embedding shapes)."""
    chat_tokens: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
    """Chat-template markers: each one id, never split (ids 4, 5, … right after unk/bos/eos/pad)."""
    user_defined_symbols: tuple[str, ...] = ()
    """More pieces that always encode as one id (after the chat tokens)."""
    unigram_threads: int = 2
    """Threads for unigram training. Unigram's EM result depends on how sentences are split over
    threads, so unlike `num_threads` this one is part of the artifact key."""
    existing: str = path_field("")
    """Path to an existing SentencePiece .model (or a directory holding tokenizer.model): copied, not trained."""
    existing_sha256: str = ""
    """sha256 of `existing`, filled in from the file when empty (so a changed file changes the key)."""
    num_threads: int = runtime_field(2)
    """Threads for BPE training (BPE's result does not depend on it)."""

    def __post_init__(self) -> None:
        _check_sizes(self)
        if self.model_type not in ("bpe", "unigram"):
            raise KilnError(f"tokenizer.model_type: must be 'bpe' or 'unigram', got {self.model_type!r}")
        if self.normalization_rule_name not in NORMALIZATIONS:
            raise KilnError(
                f"tokenizer.normalization_rule_name: must be one of {list(NORMALIZATIONS)}, "
                f"got {self.normalization_rule_name!r}"
            )
        _check_symbols(self)
        if any(w < 0 for w in self.source_weights.values()) or (
            self.source_weights and not any(w > 0 for w in self.source_weights.values())
        ):
            raise KilnError(f"tokenizer.source_weights: weights must be ≥ 0 and one > 0, got {self.source_weights}")
        if self.existing:
            sha = sha256_file(resolve_existing(self.existing))
            if self.existing_sha256 and self.existing_sha256 != sha:
                raise KilnError(
                    f"tokenizer.existing: {self.existing} changed (sha256 {sha[:12]}…, config pins "
                    f"{self.existing_sha256[:12]}…); clear tokenizer.existing_sha256 to accept the new file"
                )
            object.__setattr__(self, "existing_sha256", sha)
        elif self.existing_sha256:
            raise KilnError("tokenizer.existing_sha256: set only together with tokenizer.existing")

    @property
    def symbols(self) -> list[str]:
        """User-defined pieces in id order: chat tokens first."""
        return [*self.chat_tokens, *self.user_defined_symbols]


def _check_sizes(cfg: TokenizerConfig) -> None:
    # 4 control pieces + user symbols + 256 byte pieces must fit, with room for at least one real piece.
    required = 4 + len(cfg.chat_tokens) + len(cfg.user_defined_symbols) + (256 if cfg.byte_fallback else 0)
    if not isinstance(cfg.vocab_size, int) or cfg.vocab_size <= required:
        raise KilnError(
            f"tokenizer.vocab_size: must be > {required} (special, chat and byte pieces), got {cfg.vocab_size!r}"
        )
    checks = {
        "character_coverage": 0 < cfg.character_coverage <= 1,
        "max_sentence_length": cfg.max_sentence_length > 0,
        "input_sentence_size": cfg.input_sentence_size > 0,
        "pad_to_multiple_of": cfg.pad_to_multiple_of >= 1,
        "unigram_threads": cfg.unigram_threads >= 1,
        "num_threads": cfg.num_threads >= 1,
    }
    for name, ok in checks.items():
        if not ok:
            raise KilnError(f"tokenizer.{name}: invalid value {getattr(cfg, name)!r} (must be positive; coverage ≤ 1)")


def _check_symbols(cfg: TokenizerConfig) -> None:
    symbols = cfg.symbols
    for sym in symbols:
        key = "chat_tokens" if sym in cfg.chat_tokens else "user_defined_symbols"
        if not sym or sym in (UNK, BOS, EOS, PAD) or any(c.isspace() for c in sym):
            raise KilnError(f"tokenizer.{key}: {sym!r} must be non-empty, without spaces, and not unk/bos/eos/pad")
    if len(set(symbols)) != len(symbols):
        raise KilnError(f"tokenizer.chat_tokens/user_defined_symbols: duplicates in {symbols}")


def resolve_existing(path: str) -> Path:
    """`existing` as a .model file (a directory means its tokenizer.model); KilnError if absent."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise KilnError(
            f"tokenizer.existing: {p} not found; point it at a SentencePiece .model file or a "
            "directory holding tokenizer.model"
        )
    return p


TOKENIZER = Stage(STAGE, "1", TokenizerConfig, inputs=("docs",))


def train_tokenizer(docs: ArtifactRef, cfg: TokenizerConfig, store: ArtifactStore) -> ArtifactRef:
    """The tokenizer artifact for `docs` and `cfg`, trained (or copied) only if not in the store yet."""
    return TOKENIZER.produce(store, cfg, {"docs": docs}, lambda build: _build_into(build, docs, cfg))


@TOKENIZER.task
def tokenizer_task(docs: ArtifactRef, cfg: TokenizerConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key (see tasks.stage)."""
    return reported(train_tokenizer(docs, cfg, open_store(store_root)))


def _build_into(build: Build, docs: ArtifactRef, cfg: TokenizerConfig) -> None:
    if cfg.existing:
        _copy_existing(build, cfg)
        return
    started = time.monotonic()
    sentences, stats = sample_sentences(doc_shards(docs.path), cfg)
    if not sentences:
        raise KilnError(
            f"{docs.path}: no text to train a tokenizer on (documents: {stats['documents']}); "
            "check the clean stage output or tokenizer.source_weights"
        )
    sample_path = build.dir / SAMPLE_FILE
    try:
        with open(sample_path, "w", encoding="utf-8") as fh:
            fh.writelines(s + "\n" for s in sentences)
        del sentences  # free the sample before SentencePiece loads its own copy
        sampled_at = time.monotonic()
        _train_sentencepiece(sample_path, build.dir, cfg)
    finally:
        sample_path.unlink(missing_ok=True)
    trained_at = time.monotonic()
    _write_outputs(build, cfg, origin={"trained_on": str(docs)}, sample=stats)
    build.counts.update({k: stats[k] for k in ("documents", "sentences_seen", "sentences_sampled")})
    build.extra["timings_s"] = {"sample": round(sampled_at - started, 3), "train": round(trained_at - sampled_at, 3)}
    build.extra["peak_rss_mb"] = peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- sampling ------------------------------------------------------------------
@dataclass
class Reservoir:
    """Algorithm R: a uniform sample of at most `capacity` items from a stream of unknown length."""

    capacity: int
    rng: random.Random
    items: list[str] = field(default_factory=list)
    seen: int = 0

    def add(self, item: str) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = int(self.rng.random() * self.seen)  # random() is ~4× faster than randrange at these sizes
        if j < self.capacity:
            self.items[j] = item


def split_sentences(text: str, max_bytes: int) -> tuple[list[str], int]:
    """Training sentences of one document (its non-empty lines, long ones split at sentence ends)
    and how many pieces were dropped as still longer than `max_bytes`."""
    out: list[str] = []
    dropped = 0
    for line in text.split("\n"):
        if not line.strip():  # kept unstripped otherwise: indentation is text the tokenizer must learn
            continue
        if len(line) * 4 <= max_bytes or len(line.encode("utf-8")) <= max_bytes:  # 4 bytes/char at most
            out.append(line)
            continue
        for sent in _SENTENCE_END.split(line):
            if len(sent.encode("utf-8")) <= max_bytes:
                out.append(sent)
            else:
                dropped += 1
    return out, dropped


def _reservoirs(cfg: TokenizerConfig) -> dict[str, Reservoir]:
    """One reservoir per weighted source, or a single "*" one (proportional sampling)."""
    def rng(name: str) -> random.Random:
        return random.Random(f"{cfg.seed}:{name}")  # str seeds hash with sha512: stable across runs

    if not cfg.source_weights:
        return {"*": Reservoir(cfg.input_sentence_size, rng("*"))}
    total = sum(cfg.source_weights.values())
    return {
        src: Reservoir(int(cfg.input_sentence_size * w / total), rng(src))
        for src, w in sorted(cfg.source_weights.items())
        if w > 0
    }


def sample_sentences(shards: Sequence[Path], cfg: TokenizerConfig) -> tuple[list[str], dict[str, Any]]:
    """Stream every document once and keep a seeded, bounded sample of its sentences."""
    reservoirs = _reservoirs(cfg)
    per_source: dict[str, dict[str, int]] = {}
    documents = dropped = 0
    for doc in iter_documents(shards, columns=("source", "text"), batch_size=256):
        documents += 1
        src = doc["source"] or ""
        sentences, n_dropped = split_sentences(doc["text"] or "", cfg.max_sentence_length)
        dropped += n_dropped
        stats = per_source.setdefault(src, {"documents": 0, "sentences": 0})
        stats["documents"] += 1
        stats["sentences"] += len(sentences)
        res = reservoirs.get("*") or reservoirs.get(src)
        if res is not None:
            for s in sentences:
                res.add(s)
    missing = sorted(s for s in cfg.source_weights if s not in per_source)
    if missing:
        raise KilnError(
            f"tokenizer.source_weights: source(s) {missing} not in the documents; sources present: {sorted(per_source)}"
        )
    sample = [s for name in sorted(reservoirs) for s in reservoirs[name].items]
    stats = {
        "documents": documents,
        "sentences_seen": sum(v["sentences"] for v in per_source.values()),
        "sentences_sampled": len(sample),
        "sentences_too_long": dropped,
        "bound": cfg.input_sentence_size,
        "per_source": {k: per_source[k] for k in sorted(per_source)},
        "sampled_per_source": {name: len(r.items) for name, r in sorted(reservoirs.items())},
    }
    return sample, stats


# -- training ------------------------------------------------------------------
def _train_sentencepiece(sample_path: Path, out_dir: Path, cfg: TokenizerConfig) -> None:
    """Train on the sample file, writing tokenizer.model/.vocab into `out_dir`; clear errors for bad sizes."""
    spm.set_random_generator_seed(cfg.seed)
    prefix = out_dir / Path(MODEL_FILE).stem
    try:
        spm.SentencePieceTrainer.train(
            input=str(sample_path),
            model_prefix=str(prefix),
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback,
            split_digits=cfg.split_digits,
            normalization_rule_name=cfg.normalization_rule_name,
            # Byte-exact round trips: keep runs of spaces (code, tables) as pieces instead of collapsing them.
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            # No implicit leading "▁": text is encoded exactly as written, so a chat turn that starts with
            # <|im_start|> gets no stray "▁" token and Hugging Face's export segments identically.
            add_dummy_prefix=False,
            max_sentence_length=cfg.max_sentence_length,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
            user_defined_symbols=cfg.symbols,
            num_threads=cfg.unigram_threads if cfg.model_type == "unigram" else cfg.num_threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise _training_error(str(exc), cfg, sample_path) from None
    model_path = out_dir / MODEL_FILE
    atomic_write_bytes(model_path, strip_machine_fields(model_path.read_bytes()))


def _training_error(message: str, cfg: TokenizerConfig, sample_path: Path) -> KilnError:
    """SentencePiece's errors are C++ check failures; say which config key to change instead."""
    if "Vocabulary size too high" in message or "vocab_size()) == (model_proto->pieces_size" in message:
        limit = re.search(r"<= (\d+)", message)
        hint = f" (at most {limit.group(1)} here)" if limit else ""
        return KilnError(
            f"tokenizer.vocab_size: {cfg.vocab_size} is too large for this corpus sample{hint}; "
            "lower tokenizer.vocab_size or add documents"
        )
    if "required_chars" in message:
        return KilnError(
            f"tokenizer.vocab_size: {cfg.vocab_size} is too small for the characters in this sample; "
            "raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        )
    return KilnError(f"{sample_path}: SentencePiece training failed: {message.splitlines()[0] if message else '?'}")


def _copy_existing(build: Build, cfg: TokenizerConfig) -> None:
    src = resolve_existing(cfg.existing)
    if sha256_file(src) != cfg.existing_sha256:  # edited after the config (and so the artifact key) was made
        raise KilnError(f"tokenizer.existing: {src} changed since the config was loaded; run the stage again")
    sp = load_sentencepiece(src)
    specials = special_pieces(sp.serialized_model_proto())
    missing = [s for s in cfg.symbols if s not in specials]
    if missing:
        raise KilnError(
            f"tokenizer.existing: {src} has no single-id piece for {missing}; "
            "set tokenizer.chat_tokens = [] (and user_defined_symbols) or train a tokenizer instead"
        )
    if sp.eos_id() < 0:
        raise KilnError(f"tokenizer.existing: {src} defines no EOS piece; documents could not be separated")
    atomic_write_bytes(build.dir / MODEL_FILE, src.read_bytes())
    _write_outputs(build, cfg, origin={"existing": str(src), "sha256": cfg.existing_sha256}, sample=None)
    build.counts["copied"] = 1


def _write_outputs(build: Build, cfg: TokenizerConfig, *, origin: dict[str, Any], sample: Any) -> None:
    """tokenizer.vocab and tokenizer_meta.json, both derived from the model now in the build dir."""
    model_bytes = (build.dir / MODEL_FILE).read_bytes()
    sp = load_sentencepiece(build.dir / MODEL_FILE)
    n = sp.get_piece_size()
    vocab_lines = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(n))
    atomic_write_text(build.dir / VOCAB_FILE, "".join(vocab_lines))
    spec_bytes = next((v for k, v, _ in proto_fields(model_bytes) if k == 2 and isinstance(v, bytes)), b"")
    spec = {num: v for num, v, _ in proto_fields(spec_bytes)}
    meta = {
        "format": "sentencepiece",
        "model_type": {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(int(spec.get(3, 1)), "?"),  # type: ignore[arg-type]
        "vocab_size": n,
        "model_vocab_size": padded_vocab_size(n, cfg.pad_to_multiple_of),
        "pad_to_multiple_of": cfg.pad_to_multiple_of,
        "unk_id": sp.unk_id(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "pad_id": sp.pad_id(),
        "special_tokens": special_pieces(model_bytes),
        "chat_tokens": list(cfg.chat_tokens),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "origin": origin,
        "sample": sample,
    }
    atomic_write_text(build.dir / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))

