#!/usr/bin/env bash
# GPU call 28 (2026-12-04, fifth session; carry .devdata): the 125M settings of call 26's best row in the trainer
# itself rather than the benchmark -- `python -m trainer.pretrain` with configs/train/125m.toml on real tokens
# (the 0.1 GB scale corpus), the loader, metrics, validation and the final checkpoint included: the tok/s and
# MFU its metrics.jsonl logs.
set -u
R=/tmp/r28; NAME=call28; BUDGET=${BUDGET:-240}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
echo "=== pretrain 125m $(date +%T)" >> $LOG
timeout 220 python3 -m trainer.pretrain --config configs/train/125m.toml data.train_dir=.devdata/tokens/train \
  data.val_dir=.devdata/tokens/val run.out_dir=$R/run-125m model.overrides.vocab_size=32000 \
  model.overrides.max_seq_len=2048 data.seq_len=2048 data.micro_batch_size=128 data.grad_accum_steps=1 \
  run.parallel=fsdp run.fused_loss=true run.fused_loss_chunk=65536 run.steps=60 schedule.warmup_steps=10 \
  run.log_every=10 run.val_every=0 run.val_batches=4 > $R/pretrain.log 2>&1
echo "rc=$?" >> $LOG; tail -n 4 $R/pretrain.log >> $LOG
cp $R/run-125m/metrics.jsonl $R/pretrain-125m-metrics.jsonl 2>/dev/null; grep '"train"' $R/pretrain-125m-metrics.jsonl | tail -n 3 >> $LOG
echo "=== done $(date +%T)" >> $LOG; pack
