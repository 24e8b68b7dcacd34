"""The embedded default: the paper's study in miniature, from nothing downloaded.

`bash scripts/demo.sh` (or `python -m llava.demo`) builds the synthetic corpus, loads the shipped tiny
base models (checked against their recorded hashes), fills the frozen-feature cache, then for every
seed and pretraining variant runs stage 1 through `scripts/pretrain/*.sh`, measures the stage-1
projector's speech->text alignment per LLM layer, fine-tunes on 10 % of the task data through
`scripts/finetune/*.sh` and evaluates (test-set WER/BLEU/F1 and the dev NLL learning curve); one
100 % run of the best variant gives the full-data share. The report gives every cell as mean ± 95 %
t-interval over seeds and tests every pair of variants (`pipeline`, `report`, `stats`, `plots`).
`python -m llava.demo.diagnose` measures the gradient balance of the layer-wise contrastive loss.
"""
