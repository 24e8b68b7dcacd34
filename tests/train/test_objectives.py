"""The objective registry and `build_objective`: which flags select which objectives, their weights,
flag validation, and the host syncs of a whole training step."""

from __future__ import annotations

import pytest
import torch

from llava.train.objectives import (
    OBJECTIVES,
    NwpObjective,
    get_objective,
    parse_layer_weights,
)
from tests.helpers import contrastive_batch, objective_from_flags, weighted_loss


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
    objective = objective_from_flags(tiny_model[0], **flags)
    assert objective.names == parts and objective.collator_mode == mode
    assert objective.needs_transcript == ("contrastive_training" in flags)


def test_combined_loss_is_the_weighted_sum_of_terms(tiny_model):
    model, tok = tiny_model
    batch = contrastive_batch(model, tok)
    obj = objective_from_flags(
        model,
        contrastive_training=True,
        contrastive_layer="0,2",
        contr_asr_combine_loss=True,
        nwp_loss_weight=0.5,
        contrastive_loss_weight=2.0,
        contrastive_layer_weights="2:0.25",
    )
    assert obj.weights == {"contrastive_layer_0": 2.0, "contrastive_layer_2": 0.5, "nwp": 0.5}
    loss, terms = weighted_loss(obj, model, batch)
    expected = 2.0 * terms["contrastive_layer_0"] + 0.5 * terms["contrastive_layer_2"] + 0.5 * terms["nwp"]
    torch.testing.assert_close(loss, expected)


def test_mixed_contrastive_pools_special_tokens_by_default(tiny_model):
    model, _ = tiny_model
    assert objective_from_flags(model, audio_nwp=True, contrastive_training=True).transcript_special_tokens
    plain = objective_from_flags(
        model, audio_nwp=True, contrastive_training=True, mixed_contrastive_special_tokens=False
    )
    assert not plain.transcript_special_tokens
    assert not objective_from_flags(model, contrastive_training=True).transcript_special_tokens


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
        objective_from_flags(model, **kw)


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
    objective = objective_from_flags(model, **flags)
    batch = contrastive_batch(model, tok)
    batch["num_labelled"] = int((batch["labels"][:, 1:] != -100).sum())  # counted by the data loader
    with _SyncRecorder() as rec:
        loss, _ = weighted_loss(objective, model, batch)
        loss.backward()
    assert len(rec.hits) == expected, rec.hits
    assert all(h.startswith("llava/model/modeling.py") for h in rec.hits)


def test_parse_layer_weights():
    assert parse_layer_weights(None, [0, 2], 2) == {} and parse_layer_weights("", [0], 2) == {}
    assert parse_layer_weights(" 2:0.5, 0:3", [0, 2], 2) == {2: 0.5, 0: 3.0}
    assert parse_layer_weights("last:0.5,-3:2", [0, 2], 2) == {
        2: 0.5,
        0: 2.0,
    }  # names as in --contrastive_layer
    with pytest.raises(ValueError, match=r"names layers \[1\] not in --contrastive_layer \[0, 2\]"):
        parse_layer_weights("1:1", [0, 2], 2)
    with pytest.raises(ValueError, match="bad item '2=1'"):
        parse_layer_weights("2=1", [0, 2], 2)
