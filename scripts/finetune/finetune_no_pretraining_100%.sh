#!/usr/bin/env bash
# Stage 2: ASR + ST + SQA fine-tuning on all task data with a randomly initialised projector (no stage 1).
# Usage: bash scripts/finetune/finetune_no_pretraining_100%.sh [extra train.py arguments]
source "$(dirname "$0")/_mixed_tasks.sh"
finetune_mixed_tasks 1.0 random "$@"
