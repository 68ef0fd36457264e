"""One flow per stage, for running (or deploying) a stage alone; its upstream stages come from the cache."""

from __future__ import annotations

from typing import Any

from flows.dag import run_dag
from flows.pipeline import kiln_flow


@kiln_flow("kiln-download")
def download_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Fetch the configured sources."""
    return run_dag(config, overrides or [], until="download").summary()


@kiln_flow("kiln-clean")
def clean_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Download (cached) and clean into Parquet documents."""
    return run_dag(config, overrides or [], until="clean").summary()


@kiln_flow("kiln-tokenizer")
def tokenizer_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train (or import) the tokenizer on the cleaned documents."""
    return run_dag(config, overrides or [], until="tokenizer").summary()


@kiln_flow("kiln-pretokenize")
def pretokenize_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Tokenize the documents into token shards."""
    return run_dag(config, overrides or [], until="pretokenize").summary()


@kiln_flow("kiln-pretrain")
def pretrain_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Pretrain the model through torchrun."""
    return run_dag(config, overrides or [], until="pretrain").summary()


@kiln_flow("kiln-generate")
def generate_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Sample text from the pretrained model."""
    return run_dag(config, overrides or [], until="generate").summary()


@kiln_flow("kiln-sft")
def sft_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Supervised fine-tuning of the pretrained model on the configured instruction data."""
    return run_dag(config, overrides or [], until="sft").summary()


@kiln_flow("kiln-dpo")
def dpo_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Direct preference optimization of the fine-tuned model."""
    return run_dag(config, overrides or [], until="dpo").summary()


@kiln_flow("kiln-evaluate")
def evaluate_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Perplexity on held-out token shards and loss on the SFT validation set, for the final model."""
    return run_dag(config, overrides or [], until="evaluate").summary()


@kiln_flow("kiln-export")
def export_flow(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Export the final model in the Hugging Face Llama layout."""
    return run_dag(config, overrides or [], until="export").summary()


STAGE_FLOWS = {
    "download": download_flow,
    "clean": clean_flow,
    "tokenizer": tokenizer_flow,
    "pretokenize": pretokenize_flow,
    "pretrain": pretrain_flow,
    "generate": generate_flow,
    "sft": sft_flow,
    "dpo": dpo_flow,
    "evaluate": evaluate_flow,
    "export": export_flow,
}
