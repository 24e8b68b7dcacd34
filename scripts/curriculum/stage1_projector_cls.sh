#!/usr/bin/env bash
# Curriculum stage 1 of 3: the projector alone (encoder and LLM frozen, no LoRA) on closed-ended
# classification data (CLS tasks, e.g. speaker gender, emotion).
# Usage: DATA_CONFIG=<classification data config> bash scripts/curriculum/stage1_projector_cls.sh [extra train.py arguments]
# On the synthetic corpus: python -m llava.demo.corpus.attributes --corpus DIR writes DIR/configs/attributes_cls.yml.
source "$(dirname "$0")/_stages.sh"
: "${DATA_CONFIG:?set DATA_CONFIG to a data config of classification tasks}"
curriculum_stage 1e-3 "${INIT_FROM:-none}" "$@"
