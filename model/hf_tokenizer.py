"""A Kiln tokenizer directory as a Hugging Face Llama tokenizer (``AutoTokenizer.from_pretrained`` loads it).

    save_hf_tokenizer("kiln-artifacts/tokenizer/<key>", "out/hf")

Used by the export stage (`model.hf_interop.export_hf`) and the pretokenize benchmark's
datatrove baseline. ``tokenizer.json`` is built with the `tokenizers` package (a core
dependency), reproducing SentencePiece's segmentation the way Llama's fast tokenizer does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE, Unigram

from model.sp_proto import normalizer_spec
from model.tokenizer import BOS, EOS, MODEL_FILE, UNK, Tokenizer


def save_hf_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path, *, prompt_prefix: Sequence[int] = ()) -> Path:
    """Write a Hugging Face Llama tokenizer that ``AutoTokenizer.from_pretrained(out_dir)`` loads.

    Files: ``tokenizer.model`` (ours, unchanged), ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``tokenizer.json`` (without it transformers ≥ 5 needs
    protobuf to convert the .model itself).
    Special and chat tokens are declared as special added tokens so Hugging Face, like
    SentencePiece, never splits them. `prompt_prefix` is what Kiln puts before a prompt
    (`model.loading.prompt_prefix`: the token documents started with in pretraining, EOS
    by default): HF adds it as its special tokens, so ``hf_tok(text)["input_ids"]`` is
    exactly the prompt ``kiln generate`` feeds the model, and
    ``hf_tok(text, add_special_tokens=False)`` equals ``Tokenizer.encode(text)``: exactly
    for BPE models; for unigram, except where two segmentations score exactly alike.
    A one-token prefix is HF's ``bos_token`` (with ``add_bos_token``, which is how
    transformers 4 and 5 alike rebuild the post-processor), even when that token is EOS,
    as for GPT-2.
    """
    tok = Tokenizer.load(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(tokenizer_dir) / MODEL_FILE, out / MODEL_FILE)
    prefix = [tok.id_to_token(int(i)) for i in prompt_prefix]
    specials = tok.special_tokens
    special_map: dict[str, Any] = {"unk_token": UNK, "bos_token": prefix[0] if len(prefix) == 1 else BOS,
                                   "eos_token": EOS}
    if tok.pad_id >= 0:
        special_map["pad_token"] = tok.id_to_token(tok.pad_id)
    extra = [p for p in specials if p not in special_map.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    config = {
        # transformers ≥ 5 rebuilds a LlamaTokenizer as BPE, so a unigram model loads as the generic class.
        "tokenizer_class": "PreTrainedTokenizerFast" if tok.meta.get("model_type") == "unigram" else "LlamaTokenizer",
        # Set, they make transformers rebuild the post-processor from bos/eos; a longer prefix keeps tokenizer.json's.
        **({} if len(prefix) > 1 else {"add_bos_token": len(prefix) == 1, "add_eos_token": False}),
        "add_prefix_space": bool(normalizer_spec(tok.sp.serialized_model_proto()).get(3, 1)),
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(tok.meta.get("model_max_length", 1_000_000_000)),
        "added_tokens_decoder": {str(i): _added_token(p) for p, i in sorted(specials.items(), key=lambda kv: kv[1])},
        **special_map,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_map)
    hf = _hf_fast_tokenizer(tok)
    if prefix:
        hf.post_processor = _prefix_processor(prefix, [int(i) for i in prompt_prefix])
    _write_json(out / "tokenizer.json", json.loads(hf.to_str()))
    return out


def _prefix_processor(pieces: list[str], ids: list[int]) -> Any:
    """``<prefix> $A`` (and ``<prefix> $A <prefix> $B`` for pairs), as transformers builds it from add_bos_token."""
    first = " ".join(f"{p}:0" for p in pieces)
    second = " ".join(f"{p}:1" for p in pieces)
    return processors.TemplateProcessing(single=f"{first} $A:0", pair=f"{first} $A:0 {second} $B:1",
                                         special_tokens=sorted(set(zip(pieces, ids, strict=True))))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_token(piece: str) -> dict[str, Any]:
    return {"content": piece, "lstrip": False, "rstrip": False, "normalized": False,
            "single_word": False, "special": True}


def _hf_fast_tokenizer(tok: Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` reproducing SentencePiece's segmentation (Llama's fast-tokenizer recipe)."""
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
