#!/usr/bin/env bash
# Stage 1: next-word prediction on interleaved speech/text sequences (needs word_boundaries).
# Usage: bash scripts/pretrain/pretrain-mixed-nwp.sh [extra train.py arguments]
source "$(dirname "$0")/../launch.sh"
DATA_CONFIG="${DATA_CONFIG:-$REPO_ROOT/scripts/data_configs/pretrain_mixed_nwp_mustc_giga.yml}"
train --num_train_epochs 5 --learning_rate 1e-4 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.0 \
  --per_device_train_batch_size 10 --gradient_accumulation_steps 2 --model_max_length 2048 --max_grad_norm 1.0 --seed 42 \
  --save_strategy steps --save_steps 1000 --save_total_limit 10 \
  --audio_nwp True "$@"
