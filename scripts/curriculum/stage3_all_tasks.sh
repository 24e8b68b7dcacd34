#!/usr/bin/env bash
# Curriculum stage 3 of 3: projector + LoRA on every task (classification, regression, ASR, ST, SQA,
# open-ended), starting from stage 2's projector and LoRA adapters.
# Usage: DATA_CONFIG=<data config of every task> bash scripts/curriculum/stage3_all_tasks.sh [extra train.py arguments]
# On the synthetic corpus: DIR/configs/attributes_all.yml (from python -m llava.demo.corpus.attributes).
source "$(dirname "$0")/_stages.sh"
: "${DATA_CONFIG:?set DATA_CONFIG to a data config of every task}"
curriculum_stage 1e-4 "${INIT_FROM:-$CURRICULUM_DIR/stage2_projector_lora_cls}" --lora_enable True "$@"
