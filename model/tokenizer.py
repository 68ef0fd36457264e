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

This module imports neither Prefect nor Dask: the trainer and generation use it. The model file's
wire format is read in `model.sp_proto`; the Hugging Face export lives in `model.hf_tokenizer`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from kiln.errors import KilnError
from model.sp_proto import normalizer_spec, special_pieces

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


def copy_tokenizer(src: str | Path, dst: str | Path) -> Path:
    """Copy a tokenizer directory's files (model, meta, vocab) into `dst`: every model artifact keeps its
    tokenizer beside its weights, so `kiln chat <artifact>` and the HF export need nothing else."""
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, META_FILE, VOCAB_FILE):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, out / name)
    return out


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
