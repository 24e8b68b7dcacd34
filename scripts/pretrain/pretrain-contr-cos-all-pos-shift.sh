#!/usr/bin/env bash
# Stage 1: contrastive loss over all layers with a random position shift of both passes.
# Usage: bash scripts/pretrain/pretrain-contr-cos-all-pos-shift.sh [extra train.py arguments]
source "$(dirname "$0")/../launch.sh"
DATA_CONFIG="${DATA_CONFIG:-$REPO_ROOT/scripts/data_configs/pretrain_asr_mustc_giga.yml}"
train --num_train_epochs 5 --learning_rate 1e-4 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.0 \
  --per_device_train_batch_size 10 --gradient_accumulation_steps 2 --model_max_length 2048 --max_grad_norm 1.0 --seed 42 \
  --save_strategy steps --save_steps 1000 --save_total_limit 10 \
  --contrastive_training True --contrastive_mode average --contrastive_layer all --position_shift True "$@"
