"""Export stage against transformers: the HF tokenizer starts a prompt as Kiln does, so greedy decoding agrees.

The model artifacts are random debug models (every weight random, so a wrong id or
position cannot hide) with the tokenizer and ``generation.json`` beside the weights,
the way the pretrain and SFT stages leave them. Greedy decoding is deterministic, so
comparing token lists is an exact check; everything runs in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli.main import main as kiln
from kiln.chat import IM_END, encode_prompt
from model import Llama, get_preset
from model.generate import stream_generate
from model.loading import load_model, prompt_prefix
from model.tokenizer import Tokenizer, copy_tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.export import ExportConfig, export
from trainer.checkpoint import export_final

PROMPT = "The history of the city"
NEW_TOKENS = 24


def model_artifact(store: ArtifactStore, tokenizer_dir: Path, generation: dict, *, seed: int = 0,
                   weights=None) -> ArtifactRef:
    """A 'pretrain' artifact: a random debug model sized for the tokenizer, its files and `generation` in final/."""

    def work(build: Build) -> None:
        torch.manual_seed(seed)
        model = Llama(get_preset("debug", vocab_size=Tokenizer.load(tokenizer_dir).model_vocab_size))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
            if weights is not None:
                weights(model)
        final = export_final(model.state_dict(), model.cfg, build.dir / "final")
        copy_tokenizer(tokenizer_dir, final)
        atomic_write_text(final / "generation.json", json.dumps(generation))

    return store.produce("pretrain", "test", {"seed": seed, **generation}, [], work)


@pytest.fixture
def tok(chat_tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(chat_tokenizer_dir)


@pytest.mark.parametrize("start", ["eos", "bos"])  # documents packed without BOS (the default) or with it
def test_transformers_greedy_from_the_export_equals_kiln_generate(tmp_path, chat_tokenizer_dir, tok, start):
    transformers = pytest.importorskip("transformers")
    store = open_store(tmp_path)
    first = tok.eos_id if start == "eos" else tok.bos_id
    model_ref = model_artifact(store, chat_tokenizer_dir, {"prompt_prefix": [first]})
    ids = [*prompt_prefix(model_ref.path, tok), *tok.encode(PROMPT)]
    assert ids[0] == first

    hf_dir = export(model_ref, ExportConfig(dtype="float32"), store).path / "hf"
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok(PROMPT)["input_ids"] == ids  # the prefix comes from the tokenizer itself
    assert hf_tok(PROMPT, add_special_tokens=False)["input_ids"] == ids[1:]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([hf_tok(PROMPT)["input_ids"]]), do_sample=False,
                          max_new_tokens=NEW_TOKENS)[0, len(ids):].tolist()

    model, _ = load_model(model_ref.path)
    ours = list(stream_generate(model, ids, NEW_TOKENS, temperature=0, eos_id=tok.eos_id))
    assert len(out) == NEW_TOKENS and out == ours
    assert len(set(ours)) > 3  # a real continuation, not one token repeated
    # What `kiln generate --temperature 0` prints is the text of those tokens, from the artifact and from the export.
    want = tok.decode([t for t in ours if t not in tok.special_tokens.values()])
    for path in (model_ref.path, hf_dir):
        assert generate_cli(path, "--max-new-tokens", str(NEW_TOKENS)) == want


def generate_cli(path: Path, *extra: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert kiln(["generate", str(path), PROMPT, "--temperature", "0", *extra]) == 0
    return out.getvalue().removesuffix("\n")


def test_export_chat_template_starts_with_bos_when_sft_data_did(tmp_path, chat_tokenizer_dir, tok):
    transformers = pytest.importorskip("transformers")
    store = open_store(tmp_path)
    model_ref = model_artifact(store, chat_tokenizer_dir, {"template": "chatml", "chat_bos": True})
    hf_tok = transformers.AutoTokenizer.from_pretrained(export(model_ref, ExportConfig(), store).path / "hf")
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Why?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == encode_prompt(tok, messages, bos=True)


def test_kiln_generate_prints_no_special_tokens(tmp_path, chat_tokenizer_dir, tok):
    """A model that only ever says <|im_end|> (a constant residual stream pointed at its output row)."""
    im_end = tok.special_tokens[IM_END]

    def always_im_end(model: Llama) -> None:
        model.tok_embeddings.weight.copy_(torch.ones_like(model.tok_embeddings.weight))
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.norm.weight.fill_(1.0)
        model.output.weight.zero_()
        model.output.weight[im_end] = 1.0

    model_ref = model_artifact(open_store(tmp_path), chat_tokenizer_dir, {"prompt_prefix": [tok.eos_id]},
                               weights=always_im_end)
    model, _ = load_model(model_ref.path)
    ids = [tok.eos_id, *tok.encode(PROMPT)]
    assert list(stream_generate(model, ids, 4, temperature=0, eos_id=tok.eos_id)) == [im_end] * 4
    assert generate_cli(model_ref.path, "--max-new-tokens", "4") == ""  # not "<|im_end|><|im_end|>…"
