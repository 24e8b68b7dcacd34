#!/usr/bin/env bash
# Curriculum stage 2 of 3: projector + LoRA on the LLM, on the classification data of stage 1,
# starting from stage 1's projector (the LoRA adapters start fresh).
# Usage: DATA_CONFIG=<classification data config> bash scripts/curriculum/stage2_projector_lora_cls.sh [extra train.py arguments]
source "$(dirname "$0")/_stages.sh"
: "${DATA_CONFIG:?set DATA_CONFIG to a data config of classification tasks}"
curriculum_stage 1e-4 "${INIT_FROM:-$CURRICULUM_DIR/stage1_projector_cls}" --lora_enable True "$@"
