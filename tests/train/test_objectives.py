"""Training objectives: the registry, term composition, gradients, layers, position shift, validation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from llava.model import apply_training_mode, build_model
from llava.train.arguments import DataArguments, LossArguments
from llava.train.objectives import (
    OBJECTIVES,
    AverageContrastive,
    NwpObjective,
    ObjectiveSet,
    build_objective,
    get_objective,
)
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config
from tests.helpers import speech_batch

TEXTS = ["the quick brown fox", "a small cat", "one two three four five"]


def _contrastive_batch(model, tok, lengths=(12000, 9000, 7000)):
    return speech_batch(model, tok, list(lengths), texts=TEXTS[: len(lengths)])


def _objective(model, **loss_kw) -> ObjectiveSet:
    data_kw = {"audio_nwp": loss_kw.pop("audio_nwp", False)}
    return build_objective(LossArguments(**loss_kw), DataArguments(**data_kw), model.num_llm_layers)


def _loss(objective: ObjectiveSet, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    terms = objective(model, batch)
    return sum(objective.weights[k] * v for k, v in terms.items()), terms


def test_registry_names_every_objective_and_unknown_lists_them():
    assert sorted(OBJECTIVES) == [
        "contrastive_average",
        "contrastive_wasserstein",
        "mixed",
        "mixed_contrastive",
        "nwp",
    ]
    assert get_objective("nwp") is NwpObjective
    with pytest.raises(KeyError, match=r"unknown objective 'dot'.*contrastive_average.*nwp"):
        get_objective("dot")


@pytest.mark.parametrize(
    ("flags", "parts", "mode"),
    [
        ({}, ["nwp"], "chat"),
        ({"contrastive_training": True}, ["contrastive_average"], "chat"),
        (
            {"contrastive_training": True, "contr_asr_combine_loss": True},
            ["contrastive_average", "nwp"],
            "chat",
        ),
        ({"audio_nwp": True}, ["mixed"], "mixed"),
        ({"audio_nwp": True, "contrastive_training": True}, ["mixed_contrastive"], "mixed"),
    ],
)
def test_flags_select_objectives(tiny_model, flags, parts, mode):
    objective = _objective(tiny_model[0], **flags)
    assert objective.names == parts and objective.collator_mode == mode
    assert objective.needs_transcript == ("contrastive_training" in flags)


def test_nwp_term_equals_full_logits_cross_entropy(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [12000, 8000])
    loss, terms = _loss(_objective(model), model, batch)
    ref = model(**batch).loss  # HF's own shifted CE over the full logits
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert set(terms) == {"nwp"}
    batch["num_labelled"] = int((batch["labels"][:, 1:] != -100).sum())  # as the trainer's loader adds it
    torch.testing.assert_close(_loss(_objective(model), model, batch)[0], ref, rtol=1e-5, atol=1e-6)


def test_nwp_runs_the_lm_head_on_labelled_positions_only(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [12000, 8000])
    rows = []
    head = model.language_model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    _loss(_objective(model), model, batch)
    hook.remove()
    assert rows == [int((batch["labels"][:, 1:] != -100).sum())]


def test_contrastive_equals_reference_and_trains_projector_only(tiny_model):
    model, tok = tiny_model
    batch = _contrastive_batch(model, tok)
    obj = _objective(model, contrastive_training=True, contrastive_layer="all")
    assert obj.parts["contrastive_average"].layers == [0, 1, 2]
    loss, terms = _loss(obj, model, batch)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projector."))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())

    # Independent reference: plain loops over layers and pairs, float64.
    with torch.no_grad():
        speech, smask = model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        text = model.language_model.get_input_embeddings()(batch["text_input_ids"])
        lm = model.language_model.get_decoder()
        hs = lm(inputs_embeds=speech, attention_mask=smask.long(), output_hidden_states=True).hidden_states
        ht = lm(
            inputs_embeds=text, attention_mask=batch["text_attention_mask"], output_hidden_states=True
        ).hidden_states
    total = 0.0
    for layer in (0, 1, 2):
        s_vec, t_vec = [], []
        for i in range(3):
            s_vec.append(hs[layer][i][smask[i]].double().mean(0))
            t_vec.append(ht[layer][i][batch["text_attention_mask"][i].bool()].double().mean(0))
        layer_loss = 0.0
        for i in range(3):
            sims = torch.stack([F.cosine_similarity(t_vec[i], s_vec[j], dim=0) / 0.1 for j in range(3)])
            layer_loss += -(sims[i] - torch.logsumexp(sims, 0))
        layer_loss /= 3
        assert abs(float(terms[f"contrastive_layer_{layer}"].detach()) - float(layer_loss)) < 1e-4
        total += float(layer_loss)
    assert abs(float(loss.detach()) - total) < 1e-4


def test_combined_loss_is_the_weighted_sum_of_terms(tiny_model):
    model, tok = tiny_model
    batch = _contrastive_batch(model, tok)
    obj = _objective(
        model,
        contrastive_training=True,
        contrastive_layer="0,2",
        contr_asr_combine_loss=True,
        nwp_loss_weight=0.5,
        contrastive_loss_weight=2.0,
        contrastive_layer_weights="2:0.25",
    )
    assert obj.weights == {"contrastive_layer_0": 2.0, "contrastive_layer_2": 0.5, "nwp": 0.5}
    loss, terms = _loss(obj, model, batch)
    expected = 2.0 * terms["contrastive_layer_0"] + 0.5 * terms["contrastive_layer_2"] + 0.5 * terms["nwp"]
    torch.testing.assert_close(loss, expected)


def test_audio_is_encoded_once_per_batch(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls = []
    original = model.embed_audio
    monkeypatch.setattr(model, "embed_audio", lambda *a: calls.append(1) or original(*a))
    obj = _objective(model, contrastive_training=True, contrastive_layer="all", contr_asr_combine_loss=True)
    obj(model, _contrastive_batch(model, tok))
    assert calls == [1]


def test_layer_zero_runs_no_llm_pass(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls = []
    decoder = model.language_model.get_decoder()
    original = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    _objective(model, contrastive_training=True)(model, _contrastive_batch(model, tok))
    assert calls == []


def test_llm_stops_at_the_deepest_contrastive_layer(tiny_tokenizer):
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        {**tiny_llm_config(), "num_hidden_layers": 4},
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model)
    ran = []
    hooks = [
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        for i, block in enumerate(model.language_model.get_decoder().layers)
    ]
    _loss(
        _objective(model, contrastive_training=True, contrastive_layer="1"),
        model,
        _contrastive_batch(model, tok),
    )
    assert ran == [0, 0]  # layer 1 only, text and speech pass; layers 2-4 never run
    ran.clear()
    _loss(
        _objective(model, contrastive_training=True, contrastive_layer="-1"),
        model,
        _contrastive_batch(model, tok),
    )
    assert ran == [0, 1, 2, 3] * 2
    for h in hooks:
        h.remove()


def test_contrastive_layer_minus_one_is_the_last(tiny_model):
    model, tok = tiny_model
    last = _objective(model, contrastive_training=True, contrastive_layer="-1")
    assert last.parts["contrastive_average"].layers == [model.num_llm_layers]
    batch = _contrastive_batch(model, tok)
    torch.manual_seed(0)
    a = _loss(last, model, batch)[0]
    b = _loss(_objective(model, contrastive_training=True, contrastive_layer="last"), model, batch)[0]
    torch.testing.assert_close(a, b)


def test_position_shift_reaches_both_passes(tiny_model, monkeypatch):
    model, tok = tiny_model
    seen = []
    original = model.hidden_states

    def spy(embeds, mask, layers, position_ids=None):
        seen.append(position_ids)
        return original(embeds, mask, layers, position_ids)

    monkeypatch.setattr(model, "hidden_states", spy)
    obj = _objective(model, contrastive_training=True, contrastive_layer="all", position_shift=True)
    random.seed(5)
    obj(model, _contrastive_batch(model, tok))
    offset = random.Random(5).randrange(400)
    assert len(seen) == 2 and all(p is not None for p in seen)
    assert {int(p[0, 0]) for p in seen} == {offset}  # same offset, text and speech pass
    obj = _objective(model, contrastive_training=True, contrastive_layer="all")
    seen.clear()
    obj(model, _contrastive_batch(model, tok))
    assert seen == [None, None]


def test_position_shift_changes_nothing_on_llama_but_rounding(tiny_model):
    """Rotary embeddings make attention depend on relative positions only: one offset added to every
    position of a sequence leaves every hidden state, and so the loss and its gradient, unchanged."""
    model, tok = tiny_model
    model.eval()  # no dropout: both passes see the same projector outputs
    batch = _contrastive_batch(model, tok)
    plain = AverageContrastive([0, 1, 2])
    shifted = AverageContrastive([0, 1, 2], max_position_shift=400)

    def run(objective, seed):
        random.seed(seed)
        model.zero_grad()
        loss, terms = _loss(ObjectiveSet([objective]), model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.projector.parameters() if p.grad is not None])
        return loss.detach(), grads

    ref_loss, ref_grad = run(plain, 0)
    for seed in range(3):  # three different offsets, up to 399
        loss, grad = run(shifted, seed)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        # fp32 rounding of cos/sin at other positions: ~1e-6 relative to the gradient's size
        assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
    # ...while absolute positions do matter: a shift inside a sequence changes the states.
    embeds = torch.randn(1, 6, model.llm_hidden_size)
    mask = torch.ones(1, 6, dtype=torch.long)
    a = model.hidden_states(embeds, mask, [2], torch.arange(6)[None])[2]
    b = model.hidden_states(embeds, mask, [2], torch.tensor([[0, 1, 2, 50, 51, 52]]))[2]
    assert not torch.allclose(a, b, atol=1e-3)


def test_learnable_temperature_is_the_objectives_and_trains(tiny_model):
    model, tok = tiny_model
    obj = _objective(
        model, contrastive_training=True, learnable_temperature=True, contrastive_temperature=0.2
    )
    assert not any("temperature" in n for n, _ in model.named_parameters())  # nothing grafted on the model
    (name, param), *rest = obj.named_parameters()
    assert not rest and name.endswith("log_temperature")
    assert obj.log_values()["temperature"] == pytest.approx(0.2)
    loss, _ = _loss(obj, model, _contrastive_batch(model, tok))
    loss.backward()
    assert param.grad is not None and param.grad != 0


def test_contrastive_batch_of_one_is_skipped_not_scored(tiny_model):
    model, tok = tiny_model
    obj = _objective(model, contrastive_training=True)
    assert (
        obj.min_rows() == 2 and obj.skip_reason(1) == "too_few_pairs" and obj.skip_reason(0) == "empty_batch"
    )
    assert obj.skip_reason(2) is None
    assert obj.min_rows(world=2) == 2  # no gathering: each rank needs its own negatives
    gathered = _objective(model, contrastive_training=True, contrastive_gather=True)
    assert gathered.min_rows(world=2) == 1 and gathered.skip_reason(0, world=2) is None
    assert _objective(model).skip_reason(1) is None
    with pytest.raises(ValueError, match="at least 2"):  # the loss itself still refuses one pair
        obj(model, _contrastive_batch(model, tok, [12000]))


def test_mixed_contrastive_pools_special_tokens_by_default(tiny_model):
    model, _ = tiny_model
    assert _objective(model, audio_nwp=True, contrastive_training=True).transcript_special_tokens
    plain = _objective(
        model, audio_nwp=True, contrastive_training=True, mixed_contrastive_special_tokens=False
    )
    assert not plain.transcript_special_tokens
    assert not _objective(model, contrastive_training=True).transcript_special_tokens


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"contrastive_mode": "cosine"}, r"contrastive_mode 'cosine'.*average.*wasserstein"),
        ({"contrastive_layer": "3"}, "3"),
        ({"contrastive_layer": "-4"}, "-4"),
        ({"contrastive_layer": "first"}, "first"),
        ({"contrastive_layer": "0,1", "contrastive_layer_weights": "2:1.0"}, "not in"),
        ({"contrastive_layer": "0,1", "contrastive_layer_weights": "1=2"}, "bad item"),
        ({"contrastive_training": True, "contrastive_layer": "all", "audio_nwp": True}, "layer 0"),
        ({"learnable_temperature": True}, "needs --contrastive_training"),
        ({"contrastive_training": True, "contrastive_temperature": 0.0}, "temperature"),
        (
            {"contrastive_training": True, "contrastive_mode": "wasserstein", "contrastive_gather": True},
            "gather",
        ),
    ],
)
def test_bad_loss_flags_fail_before_training(tiny_model, kw, match):
    model, _ = tiny_model
    with pytest.raises(ValueError, match=match):
        _objective(model, **kw)


def test_mixed_contrastive_text_side_is_bos_transcript_eot_as_the_original(tiny_model):
    """Layer-0 InfoNCE between [BOS] + transcript + <|eot_id|> and the mixed sequence (BOS + spans +
    end token), both mean-pooled over every position: checked against a loop-by-loop reference."""
    import numpy as np

    from llava.dataset.collator import SpeechCollator
    from llava.dataset.sample import Sample

    model, tok = tiny_model
    rng = np.random.default_rng(0)
    samples = []
    for i, text in enumerate(TEXTS):
        words = text.split()
        audio = (rng.standard_normal(5000 + 900 * i) * 0.1).astype(np.float32)
        segments = [("text", " ".join(words[:2])), ("audio", audio[: 3000 + 500 * i]), ("text", words[-1])]
        samples.append(
            Sample(
                id=f"m{i}",
                task="ASR",
                audio=audio,
                prompt="<audio>",
                target=text,
                transcript=text,
                segments=segments,
            )
        )
    objective = _objective(model, audio_nwp=True, contrastive_training=True)
    collator = SpeechCollator(
        tok,
        model.num_audio_tokens,
        mode=objective.collator_mode,
        with_transcript=True,
        transcript_special_tokens=objective.transcript_special_tokens,
    )
    batch = collator(samples)
    assert tok.eos_token == "<|eot_id|>"
    for row, mask, text in zip(batch["text_input_ids"], batch["text_attention_mask"], TEXTS):
        ids = row[mask.bool()].tolist()
        assert ids == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id
        ]
    model.eval()
    loss, terms = _loss(objective, model, batch)
    assert set(terms) == {"contrastive_layer_0"}

    table = model.language_model.get_input_embeddings()
    with torch.no_grad():
        spliced = model.splice(
            batch["input_ids"], *model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        )
    text_vecs, mixed_vecs = [], []
    for i, text in enumerate(TEXTS):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        text_vecs.append(torch.stack([table.weight[t] for t in ids]).double().mean(0))
        n = int(batch["attention_mask"][i].sum())
        mixed_vecs.append(spliced[i, :n].double().mean(0))
    ref = 0.0
    for i in range(len(TEXTS)):
        sims = torch.stack([F.cosine_similarity(text_vecs[i], mixed_vecs[j], dim=0) / 0.1 for j in range(3)])
        ref += float(torch.logsumexp(sims, 0) - sims[i]) / len(TEXTS)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------- host syncs
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select"}  # .item()/int()/bool(), nonzero, ...
_OURS = ("llava/model/modeling.py", "llava/model/projectors/", "llava/losses/", "llava/train/objectives/")


class _SyncRecorder:
    """Records, by the calling line of our code, every op that reads device data back to the host
    on an accelerator: scalar reads, nonzero, boolean indexing, masked_select and .tolist()/.cpu()."""

    def __init__(self) -> None:
        import traceback

        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        self.hits: list[str] = []

        def caller() -> str | None:
            for frame in reversed(traceback.extract_stack()[:-2]):
                if "/torch/" in frame.filename or frame.filename == __file__:
                    continue
                path = frame.filename.replace("\\", "/")
                return next((f"{path[path.index(o) :]}:{frame.lineno}" for o in _OURS if o in path), None)
            return None

        recorder = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                index = args[1] if name.startswith("index") and len(args) > 1 else ()
                bool_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index or ())
                if (name in _SYNC_OPS or bool_index) and (where := caller()):
                    recorder.hits.append(where)
                return func(*args, **(kwargs or {}))

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in ("tolist", "cpu", "numpy") and (where := caller()):
                    recorder.hits.append(where)
                return func(*args, **(kwargs or {}))

        self.modes = (Function(), Dispatch())

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


SYNC_VARIANTS = {
    "asr": ({}, 1),
    "contr-cos-all": ({"contrastive_training": True, "contrastive_layer": "all"}, 0),  # no splice at all
    "contr-cos-all+asr": (
        {"contrastive_training": True, "contrastive_layer": "all", "contr_asr_combine_loss": True},
        1,
    ),
}


@pytest.mark.parametrize("variant", sorted(SYNC_VARIANTS))
def test_a_training_step_reads_the_device_back_only_for_the_splice_check(tiny_model, monkeypatch, variant):
    """One objective step (forward + backward): the only host sync in the model operations, losses,
    projector and objectives is the splice's placeholder count check (the check for empty rows is a
    queued device-side assertion on an accelerator, taken here on the CPU too)."""
    import llava.losses.contrastive as contrastive_mod

    monkeypatch.setattr(
        contrastive_mod,
        "check_rows_nonempty",
        lambda counts, what: torch._assert_async((counts > 0).all(), what),
    )
    model, tok = tiny_model
    flags, expected = SYNC_VARIANTS[variant]
    objective = _objective(model, **flags)
    batch = _contrastive_batch(model, tok)
    batch["num_labelled"] = int((batch["labels"][:, 1:] != -100).sum())  # counted by the data loader
    with _SyncRecorder() as rec:
        loss, _ = _loss(objective, model, batch)
        loss.backward()
    assert len(rec.hits) == expected, rec.hits
    assert all(h.startswith("llava/model/modeling.py") for h in rec.hits)
