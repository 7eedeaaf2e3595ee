"""Attention masks built from the host's copy of the batch: the same logits as the masks
transformers builds itself, for every family, and a training step that reads nothing back
from the device.

The second is checked on PyTorch's meta device, where tensors have shapes and no data: any
read of a device value on the host (``.item()``, ``bool(t)``, ``.cpu()``, ``.tolist()``) fails
there, as it would synchronise on a GPU. Before the masks were built on the host,
transformers' ``padding_mask.all()`` failed every family but DeBERTa's here."""
import pytest
import torch
from helpers import FAMILY_TOKENIZERS, write_tiny_bert
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import from_dict
from pipeline.data.tasks import TASKS
from pipeline.distill.layers import LayerLayout, layer_pairs
from pipeline.distill.mixup import mixed_view
from pipeline.distill.objective import DistillObjective
from pipeline.distill.presets import PRESETS, resolve_phases
from pipeline.distill.student import DistillModule
from pipeline.distill.terms import TERMS
from pipeline.evaluation.predict import model_inputs
from pipeline.models.attention_masks import has_padding, ready_inputs
from pipeline.models.families import family_of
from pipeline.models.loading import build_classifier

SPEC = TASKS["rotten_tomatoes"]
MODEL_TYPES = sorted(FAMILY_TOKENIZERS)
META = torch.device("meta")
HOST_SOLVED = {"emd_attention", "emd_hidden"}  # the transport plan is solved on the host each step (README)


class StepCounter:
    """What the objective reads of a DeepSpeed engine: the optimizer step (EMA updates)."""
    global_steps = 0


def padded_batch(length: int = 16) -> dict:
    """Three rows, two with padding, longer than the tiny ModernBERT's local window (8)."""
    ids = torch.randint(5, 40, (3, length))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
            "labels": torch.tensor([1, 0, 1]), "index": torch.tensor([0, 1, 2])}


def plain(batch: dict) -> dict:
    return dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_masks_built_on_the_host_give_the_models_own_logits(family_models, model_type):
    torch.manual_seed(0)
    model = build_classifier(str(family_models[model_type]), SPEC, "teacher").eval()
    kinds = family_of(model).masks
    for batch in (padded_batch(), plain(padded_batch())):
        inputs = model_inputs(batch, torch.device("cpu"))
        inputs = {k: v for k, v in inputs.items() if k != "token_type_ids" or family_of(model).token_types}
        padded = has_padding(batch["attention_mask"])
        ready = ready_inputs(model, inputs, padded)
        with torch.no_grad():
            own, built = model(**inputs).logits, model(**ready).logits
        assert torch.equal(own, built)
        if not kinds:  # a family that builds its own masks keeps the 2D one
            assert ready["attention_mask"] is inputs["attention_mask"]
        elif not padded:  # what transformers decides after asking the device
            assert "attention_mask" not in ready
        else:
            built_mask = ready["attention_mask"]
            masks = built_mask.values() if isinstance(built_mask, dict) else [built_mask]
            assert all(m.dim() == 4 for m in masks) and len(list(masks)) == len(kinds)


def test_sliding_layers_get_their_own_window(family_models):
    """ModernBERT's local layers must not get the global mask: a 4D tensor in place of the
    mapping would give every layer the global one, and other logits."""
    model = build_classifier(str(family_models["modernbert"]), SPEC, "teacher").eval()
    batch = padded_batch(24)
    inputs = model_inputs(batch, torch.device("cpu"), model)
    assert set(inputs["attention_mask"]) == {"full_attention", "sliding_attention"}
    with torch.no_grad():
        right = model(**inputs).logits
        wrong = model(**dict(inputs, attention_mask=inputs["attention_mask"]["full_attention"])).logits
    assert not torch.allclose(right, wrong)


def test_unknown_padding_leaves_the_mask_to_the_model(tiny_bert):
    model = build_classifier(str(tiny_bert), SPEC, "teacher")
    inputs = model_inputs(padded_batch(), torch.device("cpu"))
    assert has_padding(inputs["attention_mask"].to(META)) is None
    assert ready_inputs(model, inputs, None) is inputs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=5))
def test_the_mixed_views_padding_is_that_of_the_union(rows):
    mask = torch.tensor(rows, dtype=torch.long)
    view = mixed_view(0, 0, 1.0, mask, mask)
    assert view.padded == (not bool(view.mask.all()))


def phase_objectives(folder, preset: str):
    """(phase name, objective, its terms) of every phase of ``preset``, on the meta device."""
    cfg = from_dict({"seed": 3, "stages": {"distill": {"preset": preset}}})
    for phase in resolve_phases(cfg.stages.distill):
        teacher = build_classifier(str(folder), SPEC, "teacher").eval().requires_grad_(False)
        student = build_classifier(str(folder), SPEC, "student", num_layers=2)
        pairs = layer_pairs(cfg.stages.distill, 2, 4, any(TERMS[t].embeddings for t in phase.terms))
        module = DistillModule(student, sorted({s for s, _ in pairs}), teacher.config.hidden_size).to(META)
        yield phase.name, DistillObjective(cfg, phase, module, teacher.to(META), LayerLayout(pairs, 4), META, 10), \
            set(phase.terms)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_distillation_step_reads_nothing_back_from_the_device(family_models, model_type):
    """Every phase of every preset on BERT, CR-ILD's on every family (the families differ in
    their masks and captures, not in the terms): teacher and student forwards (mixup view,
    captures), the consistency target, every term and the backward pass."""
    for preset in PRESETS if model_type == "bert" else ["cr-ild"]:
        for name, objective, terms in phase_objectives(family_models[model_type], preset):
            batch = padded_batch()
            if terms & HOST_SOLVED:
                with pytest.raises(NotImplementedError, match="meta"):
                    objective(StepCounter(), batch, 1)
                continue
            total, components = objective(StepCounter(), batch, 1)
            total.backward()
            assert total.device == META, (preset, name)


def test_teacher_training_and_evaluation_forwards_read_nothing_back(tmp_path):
    model = build_classifier(str(write_tiny_bert(tmp_path / "bert")), SPEC, "teacher").to(META)
    for batch in (padded_batch(), plain(padded_batch())):
        logits = model(**model_inputs(batch, META, model)).logits
        torch.nn.functional.cross_entropy(logits, batch["labels"].to(META)).backward()
        assert logits.shape == (3, 2)
