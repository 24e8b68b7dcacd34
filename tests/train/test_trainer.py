"""SpeechTrainer on tiny in-memory data: skipped batches and steps, term logging, eval batches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from llava.dataset.collator import SpeechCollator
from llava.dataset.skips import SkipCounter, SkippedRow
from llava.train.arguments import DataArguments, LossArguments, TrainingArguments
from llava.train.objectives import build_objective
from llava.train.trainer import ObjectiveModule, SpeechTrainer
from tests.helpers import asr_sample, train_argv

TEXTS = ["the quick brown fox", "a small cat", "one two three four five", "the lazy dog"]


class _Toy(torch.utils.data.Dataset):
    """Utterances of random audio with transcripts; `bad` indices fail to decode (None)."""

    def __init__(self, n: int, bad: tuple[int, ...] = (), mixed: bool = False) -> None:
        rng = np.random.default_rng(n)
        self.items = []
        for i in range(n):
            audio = (rng.standard_normal(6000 + 700 * i) * 0.1).astype(np.float32)
            text = TEXTS[i % len(TEXTS)]
            segments = [("text", text)] if mixed else None  # a mixed sample that became all text
            self.items.append(asr_sample(f"u{i}", audio, text, segments))
        self.durations = [s.duration for s in self.items]
        self.bad = set(bad)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return None if i in self.bad else self.items[i]


def _trainer(model, tok, out, train, objective, eval_dataset=None, **kw) -> SpeechTrainer:
    args = dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    args.update(kw.pop("args", {}))
    collator = SpeechCollator(
        tok, model.num_audio_tokens, mode=objective.collator_mode, with_transcript=objective.needs_transcript
    )
    return SpeechTrainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tok,
        objective=objective,
        **kw,
    )


def _objective(model, **kw):
    audio_nwp = kw.pop("audio_nwp", False)
    return build_objective(LossArguments(**kw), DataArguments(audio_nwp=audio_nwp), model.num_llm_layers)


class _Snapshots(TrainerCallback):
    """Trainable weights and optimiser state before and after every optimiser step."""

    def __init__(self, model) -> None:
        self.model = model
        self.before: list = []
        self.after: list = []

    def _take(self, optimizer):
        weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        state = {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in enumerate(optimizer.state.values())
        }
        return weights, state

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.before.append(self._take(optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.after.append(self._take(optimizer))


def _identical(a, b) -> bool:
    (wa, sa), (wb, sb) = a, b
    if wa.keys() != wb.keys() or any(not torch.equal(wa[k], wb[k]) for k in wa):
        return False
    return sa.keys() == sb.keys() and all(
        sa[i].keys() == sb[i].keys()
        and all(torch.equal(v, sb[i][k]) if torch.is_tensor(v) else v == sb[i][k] for k, v in sa[i].items())
        for i in sa
    )


def test_zero_gradients_still_move_adamw_weights():
    """The failure a skipped step must avoid: a zero loss gives zero gradients, yet AdamW steps on its
    momentum (weights moved by up to 8e5 at lr 1e6 while every step logged loss 0)."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=1e6)
    p.grad = torch.ones(3)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.zeros(3)
    opt.step()
    assert not torch.equal(p, before)
    p.grad = None  # what the trainer does for a skipped step: torch optimisers skip the parameter
    before, state = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    opt.step()
    assert torch.equal(p, before) and all(torch.equal(v, opt.state[p][k]) for k, v in state.items())


def test_steps_after_divergence_are_skipped_with_weights_and_optimizer_state_bit_identical(
    tiny_model, tmp_path, caplog
):
    """At lr 1e6 the first step blows the projector up and every later loss is NaN: those steps
    are held back entirely instead of stepping on AdamW's momentum."""
    model, tok = tiny_model
    objective = _objective(
        model, contrastive_training=True, contrastive_layer="all", contr_asr_combine_loss=True
    )
    trainer = _trainer(model, tok, tmp_path, _Toy(8), objective, args={"learning_rate": 1e6})
    snaps = _Snapshots(trainer.model)
    trainer.add_callback(snaps)
    with caplog.at_level(logging.WARNING, logger="llava.train.trainer"):
        trainer.train()
    assert not _identical(snaps.before[0], snaps.after[0])  # step 1 trained
    assert all(_identical(snaps.before[i], snaps.after[i]) for i in (1, 2, 3))
    assert trainer.nonfinite_steps == trainer.skipped_steps == 3
    assert "step 2 skipped: non-finite loss terms" in caplog.text
    assert "weights and optimiser state unchanged" in caplog.text
    assert trainer.state.log_history[-2]["nonfinite_steps"] == 3


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_a_faulty_step_is_skipped_and_the_others_train(tiny_model, tmp_path, caplog, fault):
    model, tok = tiny_model
    objective = _objective(
        model, contrastive_training=True, contrastive_layer="all", contr_asr_combine_loss=True
    )
    calls = {"n": 0}
    real = objective.forward

    def faulty(m, batch):
        terms = real(m, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            if fault == "nan_loss":
                terms["contrastive_layer_1"] = terms["contrastive_layer_1"] * float("nan")
            else:  # a finite loss whose gradient is not
                param = next(p for p in m.projector.parameters() if p.requires_grad)
                terms["nwp"] = terms["nwp"] + (param.sum() * 0.0).clamp(max=0.0).sqrt()
        return terms

    objective.forward = faulty
    trainer = _trainer(model, tok, tmp_path, _Toy(8), objective, args={"learning_rate": 1e-2})
    snaps = _Snapshots(trainer.model)
    trainer.add_callback(snaps)
    with caplog.at_level(logging.WARNING, logger="llava.train.trainer"):
        trainer.train()
    assert trainer.nonfinite_steps == trainer.skipped_steps == 1
    assert _identical(snaps.before[2], snaps.after[2])
    assert all(not _identical(snaps.before[i], snaps.after[i]) for i in (0, 1, 3))
    expected = (
        "non-finite loss terms {'contrastive_layer_1': nan}"
        if fault == "nan_loss"
        else "non-finite gradients"
    )
    assert f"step 3 skipped: {expected}" in caplog.text
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(np.isfinite(h[k]) for h in logged for k in h if k.startswith(("contrastive_layer_", "nwp")))


@pytest.mark.parametrize("flag", ["warmup_ratio", "warmup_steps"])
def test_the_warmup_ratio_reaches_the_learning_rate_schedule(tiny_model, tmp_path, flag):
    """--warmup_ratio (the original scripts' flag, gone from transformers 5) and a ratio in
    --warmup_steps both warm the learning rate up over that share of the steps."""
    model, tok = tiny_model
    args = {"lr_scheduler_type": "linear", "warmup_steps": 0.03, "warmup_ratio": None, flag: 0.5}
    trainer = _trainer(model, tok, tmp_path, _Toy(8), _objective(model, contrastive_training=True), args=args)
    trainer.train()
    logged = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    # Linear warmup over ceil(0.5 * 4) = 2 steps, then linear decay to 0; each step logs the rate it
    # used, the schedule's value after s - 1 scheduler steps.
    peak = 1e-3
    expected = [peak * min(k / 2, (4 - k) / 2) for k in (0, 1, 2, 3)]
    np.testing.assert_allclose(logged, expected, atol=1e-12)


def test_the_paper_warmup_is_the_default_and_two_different_warmups_are_an_error(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.get_warmup_steps(1000) == 30  # 3 % of the steps, as the paper scripts
    assert (
        TrainingArguments(output_dir=str(tmp_path), report_to="none", warmup_ratio=0.1).get_warmup_steps(100)
        == 10
    )
    with pytest.raises(ValueError, match="give one of them"):
        TrainingArguments(output_dir=str(tmp_path), report_to="none", warmup_ratio=0.1, warmup_steps=5)
    with pytest.raises(ValueError, match=r"--warmup_ratio must be in \[0, 1\)"):
        TrainingArguments(output_dir=str(tmp_path), report_to="none", warmup_ratio=3.0)


def test_too_many_nonfinite_steps_stop_the_run(tiny_model, tmp_path):
    from llava.train.trainer import NonFiniteLossError

    model, tok = tiny_model
    objective = _objective(model)
    real = objective.forward
    objective.forward = lambda m, b: {k: v * float("inf") for k, v in real(m, b).items()}
    trainer = _trainer(model, tok, tmp_path, _Toy(8), objective, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLossError, match="3 training steps had a non-finite"):
        trainer.train()


def test_a_batch_left_with_one_pair_is_skipped_and_counted(tiny_model, tmp_path, caplog):
    model, tok = tiny_model
    objective = _objective(model, contrastive_training=True)
    # 4 items in 2 batches of 2; item 1 fails to decode, so its batch keeps one pair.
    trainer = _trainer(model, tok, tmp_path, _Toy(4, bad=(1,)), objective, args={"max_steps": 2})
    snaps = _Snapshots(trainer.model)
    trainer.add_callback(snaps)
    with caplog.at_level(logging.WARNING, logger="llava.train.trainer"):
        trainer.train()  # before: "a contrastive batch needs at least 2 pairs" ended the run
    assert trainer.skipped_batches == {"too_few_pairs": 1}
    assert trainer.skipped_samples == {"bad_audio": 1}
    assert trainer.skipped_steps == 1 and trainer.nonfinite_steps == 0
    skipped = [i for i in range(2) if _identical(snaps.before[i], snaps.after[i])]
    assert len(skipped) == 1  # that step held back entirely, the other one trained
    assert "no batch of it could be scored" in caplog.text
    assert trainer.state.log_history[-2]["skipped_batches"] == 1


class _ToyWithIds(_Toy):
    """`_Toy` whose bad items come as `SkippedRow` markers through `sample_or_skip`, as a
    SpeechDataset's do."""

    def sample_or_skip(self, i: int):
        return SkippedRow(f"u{i}", "non_finite_audio", "toy") if i in self.bad else self.items[i]


def test_skipped_training_rows_are_counted_once_per_row_id(tiny_model, tmp_path):
    model, tok = tiny_model
    # 3 epochs over a bad row (fetched 3 times), and validation sets that have bad rows of their own
    trainer = _trainer(
        model, tok, tmp_path, _ToyWithIds(4, bad=(1,)), _objective(model),
        eval_dataset=_ToyWithIds(4, bad=(0, 2)),
        args={"max_steps": -1, "num_train_epochs": 3, "eval_strategy": "steps", "eval_steps": 2},
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 6 and any("eval_loss" in h for h in trainer.state.log_history)
    assert trainer.skipped_samples == {"non_finite_audio": 1}  # once, not per fetch; no eval rows
    assert list(trainer.row_skips.rows) == ["u1"]
    assert [h["skipped_samples"] for h in trainer.state.log_history if "skipped_samples" in h][-1] == 1
    load = SkipCounter()
    load.seen = 5
    load.add("too_long", 1, "toy")
    summary = trainer.skip_summary(load)
    assert summary.summary() == (
        "skipped 2 of 5 samples: too_long=1, non_finite_audio=1\n  toy: too_long=1, non_finite_audio=1"
    )


def test_an_all_text_mixed_batch_gives_a_zero_gradient_step(tiny_model):
    model, tok = tiny_model
    objective = _objective(model, audio_nwp=True)
    collator = SpeechCollator(tok, model.num_audio_tokens, mode="mixed")
    batch = collator(list(_Toy(3, mixed=True).items))
    assert batch["audio_values"].shape[0] == 0
    module = ObjectiveModule(model, objective)
    terms = objective(model, batch)
    with pytest.raises(RuntimeError, match="does not require grad"):  # the original failure
        terms["nwp"].backward()
    loss, terms, reason = module(**batch)
    assert reason is None and torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), terms["nwp"].detach())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


def test_an_all_text_mixed_run_trains(tiny_model, tmp_path):
    model, tok = tiny_model
    trainer = _trainer(model, tok, tmp_path, _Toy(6, mixed=True), _objective(model, audio_nwp=True))
    trainer.train()  # before: died at the first all-text batch
    assert trainer.state.global_step == 4 and trainer.skipped_steps == 0
    assert all(np.isfinite(h["nwp"]) for h in trainer.state.log_history if "nwp" in h)


def test_odd_sized_eval_set_never_gives_a_one_pair_batch(tiny_model, tmp_path):
    model, tok = tiny_model
    objective = _objective(model, contrastive_training=True, contrastive_layer="0,1")
    trainer = _trainer(model, tok, tmp_path, _Toy(4), objective, eval_dataset=_Toy(5))
    batches = list(trainer.get_eval_dataloader())
    assert [b["input_ids"].shape[0] for b in batches] == [2, 3]
    metrics = trainer.evaluate()  # before: the last batch held one pair and the loss raised
    assert np.isfinite(metrics["eval_loss"])
    assert {"eval_contrastive_layer_0", "eval_contrastive_layer_1"} <= set(metrics)
    sub = trainer.get_eval_dataloader(torch.utils.data.Subset(_Toy(5), [0, 2, 4]))
    assert [b["input_ids"].shape[0] for b in sub] == [3]


def test_term_gradient_norms_are_logged_on_request(tiny_model, tmp_path):
    model, tok = tiny_model
    objective = _objective(
        model, contrastive_training=True, contrastive_layer="0,2", contr_asr_combine_loss=True
    )
    trainer = _trainer(
        model, tok, tmp_path, _Toy(4), objective, log_term_grad_norms=True, args={"max_steps": 1}
    )
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("skipped")
    terms = objective(model, batch)
    params = [p for p in model.projector.parameters() if p.requires_grad]
    expected = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        expected[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    model.zero_grad()
    trainer.train()
    logged = trainer.state.log_history[0]
    for name, value in expected.items():
        assert logged[f"grad_norm_{name}"] == pytest.approx(value, rel=1e-4)
    plain = _trainer(model, tok, tmp_path, _Toy(4), objective, args={"max_steps": 1})
    plain.train()
    assert not any(k.startswith("grad_norm_") for k in plain.state.log_history[0])


# ----------------------------------------------------------------------------- checkpoints (end to end)
def _train_args(base_dirs, corpus, out, *extra):
    return train_argv(base_dirs, corpus / "configs" / "pretrain_asr.yml", out, *extra)


def test_learnable_temperature_resumes_exactly_and_the_checkpoint_serves_inference(
    tmp_path, tiny_base_dirs, tiny_corpus
):
    import shutil

    from safetensors.torch import load_file

    from llava.eval.alignment import alignment_eval
    from llava.model import load_pretrained_model
    from llava.train import train as train_mod

    common = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "1e-2",
              "--contrastive_training", "True", "--contrastive_layer", "all", "--learnable_temperature", "True",
              "--position_shift", "True"]  # fmt: skip
    straight = tmp_path / "straight"
    trainer = train_mod.main(_train_args(tiny_base_dirs, tiny_corpus, straight, *common))
    assert "temperature" in trainer.state.log_history[0]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")  # a run killed after step 2
    train_mod.main(
        _train_args(tiny_base_dirs, tiny_corpus, resumed, *common, "--resume_from_checkpoint", "True")
    )
    for name in ("model.safetensors", "objective.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-8)  # same data, RNG and state
    weights = load_file(str(straight / "model.safetensors"))
    assert all(k.startswith("projector.") for k in weights)  # nothing of the objective in the model
    (key, log_tau), *_ = load_file(str(straight / "objective.safetensors")).items()
    assert key.endswith("log_temperature")
    middle = load_file(str(straight / "checkpoint-2" / "objective.safetensors"))[key]
    assert not torch.equal(log_tau, middle)  # the temperature trained, and was saved each time
    assert trainer.state.log_history[-2]["temperature"] == pytest.approx(float(log_tau.exp()), rel=1e-5)

    # The checkpoint loads for inference (before: "tensors not in the model") and evaluates.
    model, tok = load_pretrained_model(straight)
    for k, v in weights.items():
        assert torch.equal(dict(model.named_parameters())[k].detach(), v)
    rng = np.random.default_rng(0)
    records = [
        {"audio": (rng.standard_normal(8000) * 0.1).astype(np.float32), "transcript": t} for t in TEXTS
    ]
    results = alignment_eval(model, tok, records, layers="all", batch_size=4)
    assert sorted(results) == [0, 1, 2]
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    batch = collator(_Toy(2).items)
    out = model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        batch["audio_values"],
        batch["audio_lengths"],
        max_new_tokens=3,
        do_sample=False,
    )
    assert out.shape[0] == 2


def test_resume_refuses_a_checkpoint_without_the_objective_state(tiny_model, tmp_path):
    model, tok = tiny_model
    learnable = _objective(model, contrastive_training=True, learnable_temperature=True)
    trainer = _trainer(model, tok, tmp_path, _Toy(4), learnable)
    trainer._save(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "objective.safetensors").is_file()
    with torch.no_grad():
        learnable.parts["contrastive_average"].temperature.learned.log_temperature.fill_(0.0)
    trainer._load_from_checkpoint(str(tmp_path / "ckpt"))
    assert learnable.log_values()["temperature"] == pytest.approx(0.1)  # restored
    (tmp_path / "ckpt" / "objective.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"objective\.safetensors: missing.*cannot be resumed exactly"
    ):
        trainer._load_from_checkpoint(str(tmp_path / "ckpt"))
    fixed = _trainer(model, tok, tmp_path, _Toy(4), _objective(model, contrastive_training=True))
    fixed._save(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "objective.safetensors").exists()  # nothing to keep
    fixed._load_from_checkpoint(str(tmp_path / "plain"))
