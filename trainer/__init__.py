"""Kiln's training loops: they run under torchrun on GPU machines and import neither Prefect nor Dask.

How the pieces fit (torchtitan's split: model / parallelism / loop):

- `config.TrainConfig`: nested, documented sections (model, data, optim, schedule,
  checkpoint, run) loaded from ``configs/train/*.toml`` plus dotted overrides.
- `data`: packed next-token batches memory-mapped from token shards; rank-sliced,
  epoch-shuffled from a seed, resumable to the exact next batch.
- `schedule`, `optim`: learning rate as a pure function of the step; AdamW with
  decay on 2-D weights only.
- `parallelize`: process group, precision, activation checkpointing, compile,
  DDP / FSDP2, applied to a `model.Llama` built on the meta device.
- `checkpoint`: atomic, sha256-verified checkpoints (DCP when sharded) and the
  consolidated ``final/`` export.
- `metrics`: metrics.jsonl, loss.png, optional W&B / TensorBoard.
- `loop`: the one training loop (resume, accumulation, clipping, logging, validation,
  checkpoints, export, ``DONE.json``) and the `Recipe` interface; `state.TrainState`
  is what a checkpoint restores, `summary.TrainSummary` the ``DONE.json`` schema.
- recipes, each ``python -m trainer.<name> --config ...``: `pretrain` (fresh model,
  token shards), `sft` (chat rows, assistant-token loss) and `dpo` (preference pairs);
  the last two share `finetune` (base weights, LoRA, merged export).
"""
