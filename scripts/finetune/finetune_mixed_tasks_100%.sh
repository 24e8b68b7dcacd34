#!/usr/bin/env bash
# Stage 2: ASR + ST + SQA fine-tuning on all task data, from a stage-1 projector.
# Usage: PRETRAINED_PROJECTOR=checkpoints/<stage-1 run> bash scripts/finetune/finetune_mixed_tasks_100%.sh [extra train.py arguments]
source "$(dirname "$0")/_mixed_tasks.sh"
finetune_mixed_tasks 1.0 "${PRETRAINED_PROJECTOR:?set PRETRAINED_PROJECTOR to a stage-1 checkpoint directory}" "$@"
