"""Training-step time of each stage-1 objective relative to plain NWP (ASR pretraining).

    python benchmarks/bench_objectives.py [--steps 20] [--batch 8] [--llm-layers 4]

Builds a small random model (HuBERT-architecture encoder, Q-Former, Llama-architecture LLM) and
a synthetic batch of 2-4 s utterances with transcripts, then times forward + backward + optimiser
step per objective on this machine's CPU (or CUDA if present). Prints ms/step and the ratio to NWP.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from llava.demo.base_models.tokenizer import train_bpe_tokenizer
from llava.model import apply_training_mode, build_model
from llava.train.arguments import DataArguments, LossArguments
from llava.train.objectives import build_objective

VARIANTS = {
    "asr (nwp)": {},
    "contr-cos-emb": {"contrastive_training": True, "contrastive_layer": "0"},
    "contr-cos-all": {"contrastive_training": True, "contrastive_layer": "all"},
    "contr-cos-all+asr": {
        "contrastive_training": True,
        "contrastive_layer": "all",
        "contr_asr_combine_loss": True,
    },
    "contr-cos-all-pos-shift": {
        "contrastive_training": True,
        "contrastive_layer": "all",
        "position_shift": True,
    },
}
WORDS = "the quick brown fox jumps over a lazy dog near seven green trees in the old town".split()


def make_batch(model, tok, batch: int, rng: random.Random) -> dict[str, torch.Tensor]:
    audio_id = model.config.audio_token_id
    lengths = [rng.randint(32000, 64000) for _ in range(batch)]
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) for _ in range(batch)]
    rows, labels, text_rows = [], [], []
    for n, text in zip(lengths, texts):
        prompt = tok("Transcribe:")["input_ids"] + [audio_id] * model.num_audio_tokens(n)
        target = tok(" " + text, add_special_tokens=False)["input_ids"]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
        text_rows.append(tok(text, add_special_tokens=False)["input_ids"])

    def pad(seqs, value):
        width = max(map(len, seqs))
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    audio = torch.zeros(batch, max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n) * 0.1
    return {
        "input_ids": pad(rows, tok.pad_token_id),
        "attention_mask": pad([[1] * len(r) for r in rows], 0),
        "labels": pad(labels, -100),
        "audio_values": audio,
        "audio_lengths": torch.tensor(lengths),
        "text_input_ids": pad(text_rows, tok.pad_token_id),
        "text_attention_mask": pad([[1] * len(r) for r in text_rows], 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--llm-layers", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = train_bpe_tokenizer([" ".join(WORDS)] * 20, vocab_size=300)
    encoder = dict(model_type="hubert", hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=256, conv_dim=[64] * 7, layerdrop=0.0, feat_extract_norm="layer",
                   do_stable_layer_norm=True)  # fmt: skip
    llm = dict(model_type="llama", vocab_size=len(tok), hidden_size=256, intermediate_size=768,
               num_hidden_layers=args.llm_layers, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=2048)  # fmt: skip
    projector = dict(num_queries=4, num_layers=2, hidden_size=128, num_heads=4, intermediate_size=512)
    model, tok = build_model(encoder, llm, tokenizer=tok, projector_config=projector)
    apply_training_mode(model).to(device).train()
    batch = {k: v.to(device) for k, v in make_batch(model, tok, args.batch, random.Random(0)).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    print(f"device {device}, batch {args.batch}, LLM layers {args.llm_layers}, {args.steps} timed steps")
    base = None
    for name, flags in VARIANTS.items():
        objective = build_objective(LossArguments(**flags), DataArguments(), model.num_llm_layers)
        random.seed(0)  # position-shift offsets
        for step in range(args.steps + 3):  # 3 warm-up steps
            if step == 3:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            terms = objective(model, batch)
            loss = sum(objective.weights[k] * v for k, v in terms.items())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / args.steps * 1000
        base = base or ms
        print(f"{name:26s} {ms:8.1f} ms/step   x{ms / base:.2f} vs nwp")


if __name__ == "__main__":
    main()
