"""Truncated initialisation and the Q/K/V capture hooks."""
import math

import pytest
import torch

from pipeline.config import RandomInit
from pipeline.data.tasks import TASKS
from pipeline.errors import UserError
from pipeline.models.capture import LayerCapture
from pipeline.models.families import base_encoder as encoder_of
from pipeline.models.loading import build_classifier, resolve_model


def test_truncated_init_copies_exactly_bottom_k_layers(tiny_bert):
    from transformers import BertModel

    full = BertModel.from_pretrained(str(tiny_bert))
    student = build_classifier(str(tiny_bert), TASKS["snli"], "student", num_layers=2)
    enc = encoder_of(student)
    assert len(enc.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    full_sd, student_sd = full.state_dict(), enc.state_dict()
    copied = [k for k in student_sd if k.startswith(("embeddings.", "pooler.", "encoder.layer."))]
    assert any(k.startswith("encoder.layer.1.") for k in copied) and any(k.startswith("pooler.") for k in copied)
    for k in copied:
        assert torch.equal(student_sd[k], full_sd[k]), k
    assert not any(k.startswith("encoder.layer.2.") for k in student_sd)
    assert student.classifier.out_features == 3


def test_num_layers_beyond_backbone_is_an_error(tiny_bert):
    with pytest.raises(UserError, match="student.num_layers: 9"):
        build_classifier(str(tiny_bert), TASKS["sst2"], "student", num_layers=9)


def test_max_length_beyond_positions_is_an_error(tiny_bert):
    with pytest.raises(UserError, match="max_length: 128 exceeds teacher's 64 position embeddings"):
        build_classifier(str(tiny_bert), TASKS["sst2"], "teacher", max_length=128)


def test_model_folder_without_safetensors(tmp_path, tiny_bert):
    import shutil
    bad = tmp_path / "m"
    shutil.copytree(tiny_bert, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights"):
        resolve_model(str(bad), "teacher.model")
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="safetensors only"):
        resolve_model(str(bad), "teacher.model")


def test_random_init_shape(tiny_bert):
    m = build_classifier(str(tiny_bert), TASKS["sst2"], "teacher",
                         random_init=RandomInit(num_layers=3, hidden_size=48, num_heads=6, intermediate_size=96))
    assert m.config.num_hidden_layers == 3 and m.config.hidden_size == 48
    assert m.config._attn_implementation == "sdpa"


def test_qkv_capture_matches_eager_attention(tiny_bert):
    """Attention probabilities recomputed from the captured Q and K (SDPA model) equal the
    attention maps an eager-attention forward returns; hidden states match too."""
    from transformers import AutoModel

    sdpa = AutoModel.from_pretrained(str(tiny_bert), attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(str(tiny_bert), attn_implementation="eager").eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
    mask = (ids != 0).long()
    heads, d = sdpa.config.num_attention_heads, sdpa.config.hidden_size // sdpa.config.num_attention_heads
    with torch.no_grad(), LayerCapture(sdpa, layers=[1, -1]) as cap:
        out = sdpa(input_ids=ids, attention_mask=mask)
        ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert sorted(cap.outputs) == [1, 3]
    for layer in (1, 3):
        q = cap.outputs[layer]["q"].view(2, 6, heads, d).transpose(1, 2)
        k = cap.outputs[layer]["k"].view(2, 6, heads, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)
        torch.testing.assert_close(probs, ref.attentions[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cap.outputs[layer]["hidden"], ref.hidden_states[layer + 1], atol=1e-5, rtol=1e-4)
        v = cap.outputs[layer]["v"].view(2, 6, heads, d).transpose(1, 2)
        assert v.shape == (2, heads, 6, d)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-4)


def test_capture_hooks_are_removed(tiny_bert):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(tiny_bert))
    with LayerCapture(m, layers=[0], kinds=("q",)) as cap:
        m(input_ids=torch.tensor([[2, 3]]))
    assert "q" in cap.outputs[0]
    cap.clear()
    m(input_ids=torch.tensor([[2, 3]]))
    assert cap.outputs == {}
    with pytest.raises(UserError, match="layer 7 does not exist"):
        LayerCapture(m, layers=[7])
