"""The Kiln tokenizer: a SentencePiece model plus the metadata every later stage needs.

A tokenizer directory (the tokenizer stage's artifact) holds
- ``tokenizer.model``: the SentencePiece model (BPE or unigram, byte fallback);
- ``tokenizer.vocab``: one ``piece<TAB>score`` line per id, for people reading it;
- ``tokenizer_meta.json``: real and padded vocab sizes, special ids, chat tokens, sample stats.

    tok = Tokenizer.load("kiln-artifacts/tokenizer/<key>")
    ids = tok.encode("Hello world", eos=True)
    text = tok.decode(ids)

Fixed special ids (Llama's layout, so Llama tooling reads our models): unk 0,
bos ``<s>`` 1, eos ``</s>`` 2, pad ``<pad>`` 3, then the chat tokens
(``<|im_start|>``, ``<|im_end|>``) and any other user-defined symbols, each one
id that encoding never splits. `model_vocab_size` pads the real vocab up to a
multiple of 64 for the embedding matrix (tensor cores want aligned shapes);
padding ids never come out of `encode` and are dropped by `decode`.

This module imports neither Prefect nor Dask: the trainer and generation use it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from kiln.errors import KilnError

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
META_FILE = "tokenizer_meta.json"

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
DEFAULT_PAD_MULTIPLE = 64


def padded_vocab_size(vocab_size: int, multiple: int = DEFAULT_PAD_MULTIPLE) -> int:
    """`vocab_size` rounded up to a multiple of `multiple` (e.g. 2000 → 2048 for 64)."""
    return -(-vocab_size // multiple) * multiple


class Tokenizer:
    """A loaded SentencePiece model with Kiln's special-token conventions."""

    def __init__(self, sp: spm.SentencePieceProcessor, meta: dict[str, Any], *, num_threads: int = -1) -> None:
        self.sp = sp
        self.meta = meta
        # -1 lets SentencePiece use every core for batch encoding; pretokenize workers pass 1.
        self.num_threads = num_threads
        self._vocab_size = int(sp.get_piece_size())
        self._pad_multiple = int(meta.get("pad_to_multiple_of", DEFAULT_PAD_MULTIPLE))
        self._newline = newline_split_id(sp)

    @classmethod
    def load(cls, directory: str | Path, *, num_threads: int = -1) -> Tokenizer:
        """Read ``tokenizer.model`` and ``tokenizer_meta.json`` from a tokenizer artifact directory."""
        d = Path(directory)
        model_path, meta_path = d / MODEL_FILE, d / META_FILE
        for path in (model_path, meta_path):
            if not path.is_file():
                raise KilnError(f"{path}: tokenizer file missing; run the tokenizer stage or point at its artifact")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise KilnError(f"{meta_path}: not valid JSON ({exc}); delete {d} and rerun the tokenizer stage") from None
        return cls(load_sentencepiece(model_path), meta, num_threads=num_threads)

    # -- sizes and special ids ----------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of real SentencePiece pieces (ids 0 … vocab_size-1)."""
        return self._vocab_size

    @property
    def model_vocab_size(self) -> int:
        """Rows of the model's embedding matrix: `vocab_size` padded to `pad_to_multiple_of`."""
        return padded_vocab_size(self._vocab_size, self._pad_multiple)

    @property
    def unk_id(self) -> int:
        return int(self.sp.unk_id())

    @property
    def bos_id(self) -> int:
        return int(self.sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self.sp.eos_id())

    @property
    def pad_id(self) -> int:
        return int(self.sp.pad_id())

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control and user-defined pieces (unk, bos, eos, pad, chat tokens, …) by piece."""
        if "special_tokens" not in self.meta:  # a meta file from elsewhere: read the types from the model
            self.meta["special_tokens"] = special_pieces(self.sp.serialized_model_proto())
        return dict(self.meta["special_tokens"])

    def token_to_id(self, piece: str) -> int:
        """The id of `piece`; KilnError if the vocab has no such piece."""
        i = int(self.sp.piece_to_id(piece))
        if i == self.unk_id and piece != self.sp.id_to_piece(i):
            raise KilnError(f"token {piece!r} is not in the tokenizer vocab; add it to tokenizer.user_defined_symbols")
        return i

    def id_to_token(self, i: int) -> str:
        return str(self.sp.id_to_piece(i))

    # -- encoding --------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`; chat tokens inside it come out as their single ids."""
        return self.encode_batch([text], bos=bos, eos=eos, num_threads=1)[0]

    def encode_batch(
        self, texts: Sequence[str], *, bos: bool = False, eos: bool = False, num_threads: int | None = None
    ) -> list[list[int]]:
        """Encode many texts at once; SentencePiece spreads them over threads outside the GIL.

        When `splits_lines`, each text is encoded line by line and the ids joined with the
        newline's id: the same ids as encoding the whole text (no piece spans a newline), but
        ~1.3× faster on long documents, whose BPE merge heap otherwise grows with the document,
        and evenly spread over threads however uneven the documents are.
        """
        threads = self.num_threads if num_threads is None else num_threads
        if self._newline is None:
            return self.sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=threads)
        lines: list[str] = []
        counts: list[int] = []
        for text in texts:
            parts = text.split("\n")
            counts.append(len(parts))
            lines.extend(parts)
        encoded = self.sp.encode(lines, num_threads=threads)
        out: list[list[int]] = []
        start, newline = 0, self._newline
        for n in counts:
            ids = [self.bos_id] if bos else []
            ids.extend(encoded[start])
            for part in encoded[start + 1 : start + n]:
                ids.append(newline)
                ids.extend(part)
            if eos:
                ids.append(self.eos_id)
            out.append(ids)
            start += n
        return out

    @property
    def splits_lines(self) -> bool:
        """Whether `encode_batch` may encode line by line (see `newline_split_id`)."""
        return self._newline is not None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; padding ids (≥ vocab_size, from the padded embedding) are dropped."""
        n = self._vocab_size
        return self.sp.decode([int(i) for i in ids if 0 <= int(i) < n])


def newline_split_id(sp: spm.SentencePieceProcessor) -> int | None:
    """The id of "\\n" if encoding text line by line gives exactly the ids of the whole text, else None.

    True for the models the tokenizer stage trains: identity normalization, no dummy prefix,
    whitespace kept, "\\n" a byte-fallback piece, and no piece containing "\\n" (training
    sentences are lines). Any other model (nmt_nfkc, Llama's dummy prefix, …) encodes whole texts.
    """
    norm = normalizer_spec(sp.serialized_model_proto())
    name = norm.get(1, b"")
    if name != b"identity" or norm.get(3, 1) or norm.get(4, 1):  # add_dummy_prefix, remove_extra_whitespaces
        return None
    newline = sp.encode("\n")
    if len(newline) != 1 or not sp.is_byte(newline[0]):
        return None
    if any("\n" in sp.id_to_piece(i) for i in range(sp.get_piece_size())):
        return None
    return int(newline[0])


def load_sentencepiece(path: str | Path) -> spm.SentencePieceProcessor:
    """Load a ``.model`` file, turning SentencePiece's parse error into a KilnError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise KilnError(f"{p}: SentencePiece model not found; point at an existing tokenizer.model")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(p))
    except (OSError, RuntimeError) as exc:
        raise KilnError(f"{p}: not a SentencePiece model ({exc}); use a .model file written by SentencePiece") from None
    return sp


# SentencePiece's ModelProto, read at the wire level so we need no protobuf dependency.
# ModelProto: 1 = repeated SentencePiece, 2 = TrainerSpec, 3 = NormalizerSpec.
# SentencePiece: 1 = piece, 2 = score, 3 = type.
PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b, value = value & 0x7F, value >> 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def proto_fields(buf: bytes) -> list[tuple[int, int | bytes, bytes]]:
    """Top-level fields of a serialized protobuf message: (field number, value, raw bytes of the field)."""
    out: list[tuple[int, int | bytes, bytes]] = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        out.append((number, value, buf[start:pos]))
    return out


def piece_types(model_bytes: bytes) -> list[tuple[str, str]]:
    """(piece, type) for every id of a serialized SentencePiece model, in id order."""
    pieces = []
    for number, value, _ in proto_fields(model_bytes):
        if number == 1 and isinstance(value, bytes):
            sub = {n: v for n, v, _ in proto_fields(value)}
            text = sub.get(1, b"")
            kind = sub.get(3, 1)  # proto2 default: NORMAL
            pieces.append((text.decode("utf-8") if isinstance(text, bytes) else "", PIECE_TYPES.get(int(kind), "?")))  # type: ignore[arg-type]
    return pieces


# TrainerSpec fields that record where and how fast training ran, not what it learned:
# 1 = input path, 2 = model_prefix, 16 = num_threads.
_MACHINE_FIELDS = {1, 2, 16}


def strip_machine_fields(model_bytes: bytes) -> bytes:
    """The model without its sample path, output prefix and thread count: equal training, equal bytes."""
    out = bytearray()
    for number, value, raw in proto_fields(model_bytes):
        if number == 2 and isinstance(value, bytes):
            spec = b"".join(r for n, _, r in proto_fields(value) if n not in _MACHINE_FIELDS)
            out += encode_varint((2 << 3) | 2) + encode_varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)


def normalizer_spec(model_bytes: bytes) -> dict[int, int | bytes]:
    """NormalizerSpec fields by number (1 name, 2 precompiled charsmap, 3 add_dummy_prefix, …)."""
    spec = next((v for n, v, _ in proto_fields(model_bytes) if n == 3 and isinstance(v, bytes)), b"")
    return {n: v for n, v, _ in proto_fields(spec)}


def special_pieces(model_bytes: bytes) -> dict[str, int]:
    """Unknown, control (bos/eos/pad) and user-defined (chat) pieces of a model, by piece."""
    return {
        piece: i
        for i, (piece, kind) in enumerate(piece_types(model_bytes))
        if kind in ("unknown", "control", "user_defined")
    }


def save_hf_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Llama tokenizer that ``AutoTokenizer.from_pretrained(out_dir)`` loads.

    Files: ``tokenizer.model`` (ours, unchanged), ``tokenizer_config.json``,
    ``special_tokens_map.json``, and ``tokenizer.json`` when the `tokenizers` package is
    installed (transformers ≥ 5 otherwise needs protobuf to convert the .model itself).
    Special and chat tokens are declared as special added tokens so Hugging Face, like
    SentencePiece, never splits them; BOS/EOS are not added automatically, so HF's
    ``encode(text, add_special_tokens=False)`` and ``Tokenizer.encode(text)`` agree: exactly
    for BPE models; for unigram, except where two segmentations score exactly alike.
    """
    tok = Tokenizer.load(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(tokenizer_dir) / MODEL_FILE, out / MODEL_FILE)
    specials = tok.special_tokens
    special_map: dict[str, Any] = {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS}
    if tok.pad_id >= 0:
        special_map["pad_token"] = tok.id_to_token(tok.pad_id)
    extra = [p for p in specials if p not in (UNK, BOS, EOS, special_map.get("pad_token"))]
    if extra:
        special_map["additional_special_tokens"] = extra
    config = {
        # transformers ≥ 5 rebuilds a LlamaTokenizer as BPE, so a unigram model loads as the generic class.
        "tokenizer_class": "PreTrainedTokenizerFast" if tok.meta.get("model_type") == "unigram" else "LlamaTokenizer",
        "add_bos_token": False,  # Kiln adds BOS/EOS itself where it wants them
        "add_eos_token": False,
        "add_prefix_space": bool(normalizer_spec(tok.sp.serialized_model_proto()).get(3, 1)),
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(tok.meta.get("model_max_length", 1_000_000_000)),
        "added_tokens_decoder": {str(i): _added_token(p) for p, i in sorted(specials.items(), key=lambda kv: kv[1])},
        **special_map,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_map)
    try:
        import tokenizers  # noqa: F401  (a transformers dependency; optional for Kiln)
    except ImportError:
        return out
    _write_json(out / "tokenizer.json", json.loads(_hf_fast_tokenizer(tok).to_str()))
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_token(piece: str) -> dict[str, Any]:
    return {"content": piece, "lstrip": False, "rstrip": False, "normalized": False,
            "single_word": False, "special": True}


def _hf_fast_tokenizer(tok: Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` reproducing SentencePiece's segmentation (Llama's fast-tokenizer recipe)."""
    from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Unigram

    pieces = [(tok.id_to_token(i), float(tok.sp.get_score(i))) for i in range(tok.vocab_size)]
    specials = tok.special_tokens
    if tok.meta.get("model_type", "bpe") == "unigram":
        model = Unigram(pieces, unk_id=tok.unk_id, byte_fallback=True)
    else:
        vocab = {p: i for i, (p, _) in enumerate(pieces)}
        model = BPE(vocab=vocab, merges=bpe_merges(vocab, skip=set(specials)), unk_token=UNK,
                    fuse_unk=True, byte_fallback=True)
    hf = HFTokenizer(model)
    norm = normalizer_spec(tok.sp.serialized_model_proto())
    charsmap = norm.get(2)
    if isinstance(charsmap, bytes) and charsmap:  # nmt_nfkc & co: the same compiled Unicode rules
        hf.normalizer = normalizers.Precompiled(charsmap)
    dummy_prefix = bool(norm.get(3, 1))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if dummy_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    hf.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if dummy_prefix else []))
    hf.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in specials])
    return hf


def bpe_merges(vocab: dict[str, int], skip: set[str]) -> list[tuple[str, str]]:
    """BPE merge list from a SentencePiece BPE vocab: a piece's id is its merge rank."""
    merges = []
    for piece, rank in vocab.items():
        if piece in skip:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and left not in skip and right not in skip:
                merges.append((rank, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]
