"""The fine-tuning stages end to end: sft (killed, then resumed) → dpo → evaluate → export, and chatting.

The stages launch the real trainers as subprocesses, exactly as in the pipeline;
every shipped configs/sft/*.toml is parsed both as a trainer and as a stage config.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from cli.chat import chat_loop, generate_text
from kiln.config import load_config
from kiln.errors import KilnError
from model.loading import load_model
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.dpo import DPOStageConfig, dpo
from tasks.evaluate import EvaluateConfig, evaluate
from tasks.export import ExportConfig, export
from tasks.pretokenize import PretokenizeConfig, pretokenize
from tasks.sft import SFTStageConfig, sft
from tasks.sft_data import DPODataConfig, SFTDataConfig, prepare_dpo, prepare_sft
from tests.tasks.test_sft_data import DEMO_DPO, DEMO_SFT, REPO, raw_artifact
from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact
from tests.trainer.conftest import write_base
from trainer.dpo import DPOConfig
from trainer.loop import STOP_ENV
from trainer.sft import SFTConfig

SHORT = ["run.steps=24", "run.val_every=12", "checkpoint.every_steps=8", "data.seq_len=96", "optim.lr=3e-3"]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sft").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_parse_for_trainer_and_stage(path):
    dpo_file = "dpo" in path.name
    trainer_cfg = load_config(DPOConfig if dpo_file else SFTConfig, path)
    stage_cfg = load_config(DPOStageConfig if dpo_file else SFTStageConfig, path)
    assert stage_cfg.train_config("b", "d", "o").optim == trainer_cfg.optim


@pytest.fixture(scope="module")
def stages(tmp_path_factory, chat_tokenizer_dir) -> dict[str, ArtifactRef]:
    """A pretrain-like base artifact plus SFT and DPO data artifacts in one store."""
    store = open_store(tmp_path_factory.mktemp("stages"))

    def base_work(build: Build) -> None:
        write_base(build.dir, chat_tokenizer_dir)

    return {
        "store": store,  # type: ignore[dict-item]
        "base": store.produce("pretrain", "test", {"preset": "debug"}, [], base_work),
        "sft_data": prepare_sft(raw_artifact(store, DEMO_SFT), SFTDataConfig(val_fraction=0.2), store),
        "dpo_data": prepare_dpo(raw_artifact(store, DEMO_DPO), DPODataConfig(val_fraction=0.2), store),
    }


@pytest.fixture(scope="module")
def sft_ref(stages, monkeypatch_module) -> ArtifactRef:
    """The sft stage, killed after step 10 and rerun: the rerun resumes in the same build directory."""
    store: ArtifactStore = stages["store"]  # type: ignore[assignment]
    cfg = load_config(SFTStageConfig, REPO / "configs/sft/debug.toml", SHORT)
    # Trainers inherit the environment: one thread runs the debug model ~5x faster on a small box.
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")
    monkeypatch_module.setenv(STOP_ENV, "10")
    with pytest.raises(KilnError, match="trainer exited with code 75"):
        sft(stages["base"], stages["sft_data"], cfg, store)
    monkeypatch_module.delenv(STOP_ENV)
    return sft(stages["base"], stages["sft_data"], cfg, store)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_sft_stage_resumes_and_is_self_contained(stages, sft_ref):
    store: ArtifactStore = stages["store"]  # type: ignore[assignment]
    manifest = store.manifest(sft_ref)
    assert manifest["counts"]["steps"] == 24 and manifest["training"]["resumed"] is True
    assert [p.name for p in (sft_ref.path / "checkpoints").iterdir()] == ["step-00000024"]  # keep_checkpoints=1
    # Timings and host paths are run logs, outside content_sha256; weights and checkpoints are content.
    assert set(manifest["logs"]) == {"metrics.jsonl", "train.log", "DONE.json", "loss.png", "train_config.json",
                                     "checkpoints/step-00000024/run.json"}
    assert {"final/model.safetensors", "checkpoints/step-00000024/rng-rank00000.pt"} <= set(manifest["files"])
    final = sft_ref.path / "final"
    assert {"model.safetensors", "config.json", "tokenizer.model", "tokenizer_meta.json"} <= {
        p.name for p in final.iterdir()}
    assert json.loads((final / "generation.json").read_text())["template"] == "chatml"
    log = (sft_ref.path / "train.log").read_text()
    assert "stopped: after step 10" in log and "resumed from" in log
    cfg = load_config(SFTStageConfig, REPO / "configs/sft/debug.toml", SHORT)
    again = sft(stages["base"], stages["sft_data"], cfg, store)  # cached: no relaunch
    assert again == sft_ref and store.manifest(again)["build_id"] == manifest["build_id"]


def test_dpo_stage_on_the_sft_model(stages, sft_ref):
    store: ArtifactStore = stages["store"]  # type: ignore[assignment]
    cfg = load_config(DPOStageConfig, REPO / "configs/sft/dpo_debug.toml",
                      ["run.steps=12", "run.val_every=6", "data.seq_len=96", "dpo.beta=0.5", "optim.lr=2e-3"])
    ref = dpo(sft_ref, stages["dpo_data"], cfg, store)
    metrics = [json.loads(line) for line in (ref.path / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert train[-1]["reward_margin"] > train[0]["reward_margin"] + 0.3
    assert (ref.path / "reference_logps.pt").is_file()
    manifest = store.manifest(ref)
    assert "reference_logps.pt" in manifest["files"] and "metrics.jsonl" in manifest["logs"]
    assert json.loads((ref.path / "DONE.json").read_text())["kind"] == "dpo"


def test_evaluate_scores_perplexity_and_chat_loss(stages, sft_ref, chat_tokenizer_dir):
    store: ArtifactStore = stages["store"]  # type: ignore[assignment]
    docs = make_docs_artifact(store, load_enwiki_docs(max_chars=1500, limit=30), n_shards=1)
    tokenizer = ArtifactRef("tokenizer", chat_tokenizer_dir.name, str(chat_tokenizer_dir))
    tokens = pretokenize(docs, tokenizer, PretokenizeConfig(val_fraction=0.3, engine="serial", workers=1), store)
    cfg = EvaluateConfig(seq_len=96, max_batches=4, batch_size=4)
    results = {}
    for name in ("base", "sft"):
        model = stages["base"] if name == "base" else sft_ref
        ref = evaluate(model, cfg, store, tokens=tokens, chat=stages["sft_data"])
        results[name] = json.loads((ref.path / "eval.json").read_text())
    base, tuned = results["base"], results["sft"]
    assert base["val_tokens"] == 4 * 4 * 96 and base["sft_split"] == "val"
    assert abs(base["val_loss"] - 6.93) < 0.3  # a random model: about ln(vocab) nats per token
    assert tuned["sft_val_loss"] < base["sft_val_loss"] - 0.5  # SFT helps on held-out conversations
    only_chat = evaluate(sft_ref, cfg, store, chat=stages["sft_data"])
    assert "val_loss" not in json.loads((only_chat.path / "eval.json").read_text())


def test_export_stage_loads_in_transformers(stages, sft_ref):
    transformers = pytest.importorskip("transformers")
    store: ArtifactStore = stages["store"]  # type: ignore[assignment]
    ref = export(sft_ref, ExportConfig(dtype="float32"), store)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ref.path / "hf", dtype=torch.float32).eval()
    ours, _ = load_model(sft_ref.path)
    x = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(ref.path / "hf")
    assert hf_tok.convert_tokens_to_ids("<|im_end|>") == 5 and hf_tok.chat_template


def test_chat_loop_and_generate_text(stages, sft_ref):
    script = iter(["What is the capital of France?", "/reset", "Name three primary colors.", "/exit"])
    out = io.StringIO()
    messages = chat_loop(sft_ref.path, input_fn=lambda prompt: next(script), out=out, max_new_tokens=16,
                         temperature=0, system_prompt="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]  # /reset dropped the first exchange
    assert messages[1]["content"] == "Name three primary colors."
    assert out.getvalue().count("assistant> ") == 2
    text = generate_text(stages["base"].path / "final", "The history of", max_new_tokens=8, temperature=0)
    assert isinstance(text, str) and len(text) > 0
    streamed = io.StringIO()
    reply = generate_text(sft_ref.path, "Say hello in German.", chat=True, max_new_tokens=8, temperature=0,
                          stream=streamed)
    assert streamed.getvalue() == reply
