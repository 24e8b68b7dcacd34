"""The embedded default: the paper's study in miniature, from nothing downloaded.

`bash scripts/demo.sh` (or `python -m llava.demo`) builds the synthetic corpus and the tiny base
models, runs the pretraining variants through the same `scripts/pretrain/*.sh` a researcher uses,
fine-tunes each on 10 % of the task data, evaluates, and writes a results table and plots.
"""
