"""Every encoder family on a tiny random model of its own (transformers' config classes, real
tokenizers): the registry's facts hold, captures have the right shapes, attention rebuilt
from the captured Q and K equals the model's own eager attention where the family's
attention is softmax(QK^T / sqrt(d)) (ModernBERT: after its rotary embedding), the kernel
crild picks gives the same captures, truncation keeps the bottom layers."""
import inspect
import json
import math

import pytest
import torch
from helpers import FAMILY_TOKENIZERS

from pipeline.data.tasks import TASKS
from pipeline.errors import UserError
from pipeline.models.capture import LayerCapture
from pipeline.models.families import FAMILIES, encoder_layers, family_of
from pipeline.models.loading import build_classifier, check_max_length, load_tokenizer

SPEC = TASKS["rotten_tomatoes"]
MODEL_TYPES = sorted(FAMILY_TOKENIZERS)


def test_every_family_has_a_tiny_model():
    assert {family_of_type(mt).name for mt in MODEL_TYPES} == set(FAMILIES)


def family_of_type(model_type: str):
    return next(f for f in FAMILIES.values() if model_type in f.model_types)


def batch_for(folder, pair: bool = False):
    tok = load_tokenizer(str(folder), "test")
    a = ["good film with a dog .", "bad plot"]
    b = ["the cast was great", "a boring story"] if pair else None
    enc = tok(a, b, padding=True, return_tensors="pt", return_token_type_ids=True)
    assert enc["attention_mask"][1].sum() < enc["attention_mask"].shape[1]  # padding is exercised
    return dict(enc)


def inputs_for(model, batch):
    keys = ("input_ids", "attention_mask") + (("token_type_ids",) if family_of(model).token_types else ())
    return {k: batch[k] for k in keys}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_registry_facts_match_the_model(family_models, model_type):
    model = build_classifier(str(family_models[model_type]), SPEC, "teacher")
    family = family_of(model)
    assert ("token_type_ids" in inspect.signature(type(model).forward).parameters) == family.token_types
    assert model.config._attn_implementation == family.attention
    assert len(encoder_layers(model)) == 4


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_captures_have_the_layer_shapes_and_truncation_keeps_the_bottom_layers(family_models, model_type):
    folder = family_models[model_type]
    teacher = build_classifier(str(folder), SPEC, "teacher")
    student = build_classifier(str(folder), SPEC, "student", num_layers=2)
    assert len(encoder_layers(student)) == 2 and student.config.num_hidden_layers == 2
    if model_type == "modernbert":
        assert student.config.layer_types == teacher.config.layer_types[:2]
    t_state, s_state = teacher.state_dict(), student.state_dict()
    shared = [k for k in s_state if k in t_state and "classifier" not in k and "head" not in k and "pooler" not in k]
    assert len(shared) > 10 and all(torch.equal(s_state[k], t_state[k]) for k in shared)
    batch = batch_for(folder)
    b, t = batch["input_ids"].shape
    with LayerCapture(student, [0, -1], ("q", "k", "v", "hidden")) as cap:
        student.eval()(**inputs_for(student, batch))
    for layer in (0, 1):
        assert {k: tuple(v.shape) for k, v in cap.outputs[layer].items()} == {
            kind: (b, t, 32) for kind in ("q", "k", "v", "hidden")}


@pytest.mark.parametrize("model_type", [mt for mt in MODEL_TYPES if family_of_type(mt).exact_attention])
def test_attention_rebuilt_from_captured_q_and_k_equals_the_models_own(family_models, model_type):
    from transformers import AutoModelForSequenceClassification

    folder = family_models[model_type]
    eager = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager",
                                                               num_labels=2).eval()
    fast = build_classifier(str(folder), SPEC, "teacher").eval()
    batch = batch_for(folder, pair=family_of(eager).token_types)
    layer = 2  # ModernBERT: a global-attention layer (every second one in the tiny config)
    with LayerCapture(eager, [layer], ("q", "k", "v")) as cap:
        out = eager(**inputs_for(eager, batch), output_attentions=True)
    with LayerCapture(fast, [layer], ("q", "k", "v")) as fast_cap:
        fast(**inputs_for(fast, batch))
    for kind in ("q", "k", "v"):  # the fast kernel's captures are the eager model's
        torch.testing.assert_close(fast_cap.outputs[layer][kind], cap.outputs[layer][kind], atol=1e-5, rtol=1e-4)
    heads = eager.config.num_attention_heads
    q, k = cap.outputs[layer]["q"], cap.outputs[layer]["k"]
    b, t, h = q.shape
    q = q.view(b, t, heads, h // heads).transpose(1, 2)
    k = k.view(b, t, heads, h // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
    mask = batch["attention_mask"].bool()
    probs = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    real = mask[:, None, :, None] & mask[:, None, None, :]
    torch.testing.assert_close(probs[real.expand_as(probs)], out.attentions[layer][real.expand_as(probs)],
                               atol=1e-5, rtol=1e-4)


def test_modernbert_relations_use_q_and_k_after_the_rotary_embedding(family_models):
    """The captured Q/K are not Wqkv's raw output: they carry the positions' rotation."""
    model = build_classifier(str(family_models["modernbert"]), SPEC, "teacher").eval()
    batch = batch_for(family_models["modernbert"])
    raw = {}
    wqkv = encoder_layers(model)[0].attn.Wqkv
    def keep_raw(module, args, out) -> None:
        raw["q"] = out.chunk(3, dim=-1)[0]

    handle = wqkv.register_forward_hook(keep_raw)
    with LayerCapture(model, [0], ("q", "k", "v")) as cap:
        model(**inputs_for(model, batch))
    handle.remove()
    assert not torch.allclose(cap.outputs[0]["q"], raw["q"])
    torch.testing.assert_close(cap.outputs[0]["q"][:, 0], raw["q"][:, 0])  # position 0: rotation by angle 0


def test_an_unsupported_family_is_one_line_listing_the_supported(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as err:
        build_classifier(str(folder), SPEC, "teacher.model")
    message = str(err.value)
    assert message.startswith("teacher.model: model type 'gpt2' is not supported (supported: ")
    assert all(f"{t}" in message for f in FAMILIES.values() for t in f.model_types)


def test_reserved_positions_lower_the_length_limit(family_models):
    roberta = build_classifier(str(family_models["roberta"]), SPEC, "teacher")
    check_max_length(roberta.config, 64, "teacher")
    with pytest.raises(UserError, match="65 exceeds teacher's 64 position embeddings"):
        check_max_length(roberta.config, 65, "teacher")
    bert = build_classifier(str(family_models["bert"]), SPEC, "teacher")
    check_max_length(bert.config, 66, "teacher")


def test_a_kernel_that_packs_tokens_is_refused(family_models):
    model = build_classifier(str(family_models["bert"]), SPEC, "teacher")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserError, match="attention kernel 'flash_attention_2' unpads the batch into packed tokens"):
        LayerCapture(model, [-1], ("q", "k", "v"))


def test_a_hub_name_offline_is_one_line(tmp_path, tiny_bert, sentiment_dir):
    import subprocess
    import sys

    import yaml
    from helpers import REPO, crild_env, tiny_run_config

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["teacher"] = {"model": "microsoft/deberta-v3-base"}
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], cwd=REPO,
                          env=crild_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("crild: error: teacher.model: 'microsoft/deberta-v3-base' is not a model folder, an "
                               "offline alias or in the Hugging Face cache (") and "HF_HUB_OFFLINE is set" in lines[0]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_head_weights_a_folder_lacks_are_read_from_its_headers_as_loading_finds_them(family_models,
                                                                                         model_type, tmp_path):
    """What a run's checks find before its first stage (a backbone named where a trained
    classifier is scored, exported or distilled from) is what the stage would find on loading
    it, in every family: the head's tensors, and none once the classifier is saved."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.models.loading import encoder_config, missing_head_weights, read_model_config

    backbone = family_models[model_type]
    _, info = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=2,
                                                                 output_loading_info=True)
    missing = missing_head_weights(str(backbone), encoder_config(str(backbone), "test"), "test")
    assert missing and set(missing) == set(info["missing_keys"])  # the head, nothing else
    classifier = build_classifier(str(backbone), SPEC, "teacher")
    classifier.save_pretrained(str(tmp_path / "trained"))
    assert missing_head_weights(str(tmp_path / "trained"), read_model_config(tmp_path / "trained", "test"),
                                "test") == []
