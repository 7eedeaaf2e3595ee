"""Every stage and every preset on every encoder family (tiny random models of each, real
tokenizers): teacher fine-tuning, TinyBERT augmentation (with a masked LM of the family), all distillation presets, evaluation
and an exact resume; every output loads in plain transformers as it is. Then a teacher and a
student of different families that tokenize alike, and a student with its own tokenizer
(prediction-layer KD only; a preset that needs aligned tokens is refused in one line)."""
import json
from pathlib import Path

import pytest
import torch
from helpers import FAMILY_TOKENIZERS, tiny_run_config, write_tiny_family, write_tiny_mlm, write_vectors
from safetensors.torch import load_file

from pipeline import stage1_teacher, stage2_augment, stage3_distill, stage4_evaluate
from pipeline.config import from_dict
from pipeline.distill.presets import PRESETS
from pipeline.errors import EXIT_PREEMPTED, UserError
from pipeline.outputs.manifest import is_complete
from pipeline.training.stop import StopRequest

SHORT = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 2, "log_every": 2,
         "eval_every": 2, "eval_batch_size": 16}


def family_config(tmp_path: Path, teacher: Path, data: Path, student: Path | None = None, **distill) -> dict:
    raw = tiny_run_config(tmp_path, teacher, data, epochs=1)
    raw["task"]["few_sample"] = 32
    raw["student"] = {"init": "truncated", "backbone": str(student or teacher), "num_layers": 2}
    raw["stages"]["augment"] = {"copies": 3, "num_shards": 2, "candidates": 3,
                                "vectors": {"path": str(write_vectors(tmp_path / "vectors.txt"))},
                                "masked_lm": str(write_tiny_mlm(tmp_path / "mlm", student or teacher))}
    raw["stages"]["distill"] = {"ild": SHORT, "kd": SHORT, **distill}
    return raw


def no_stop() -> StopRequest:
    return StopRequest(install_handlers=False)


def loads_as_it_is(folder: Path) -> None:
    """A save_pretrained folder that plain transformers loads and runs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    enc = AutoTokenizer.from_pretrained(str(folder))(["a good film ."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("model_type", sorted(FAMILY_TOKENIZERS))
def test_every_stage_and_preset_on_the_family(tmp_path, family_models, sentiment_dir, model_type):
    folder = family_models[model_type]
    base = family_config(tmp_path, folder, sentiment_dir)
    cfg = from_dict(base)
    out = Path(cfg.output_dir)
    assert stage1_teacher.run(cfg, stop=no_stop()) == 0
    loads_as_it_is(out / "teacher")
    assert stage2_augment.run(cfg) == 0
    augmented = json.loads((out / "augmented" / "summary.json").read_text())
    assert augmented["examples"] == 32 and augmented["rows"] > 40  # words of every tokenizer kind get candidates

    for preset in PRESETS:
        raw = json.loads(json.dumps(base))
        raw["stages"]["distill"].update(preset=preset, output=f"student_{preset}")
        if preset == "tinybert":
            raw["stages"]["distill"]["augmented_phases"] = ["kd"]  # TinyBERT distils on its augmented data
        assert stage3_distill.run(from_dict(raw), stop=no_stop()) == 0, preset
        loads_as_it_is(out / f"student_{preset}")

    raw = json.loads(json.dumps(base))  # CR-ILD stopped mid-phase, resumed: the same weights
    raw["stages"]["distill"].update(preset="cr-ild", output="student_resumed")
    assert stage3_distill.run(from_dict(raw), stop=StopRequest(after_micro_steps=3, install_handlers=False)) \
        == EXIT_PREEMPTED
    assert stage3_distill.run(from_dict(raw), stop=no_stop()) == 0
    a, b = load_file(str(out / "student_resumed" / "model.safetensors")), \
        load_file(str(out / "student_cr-ild" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    raw = json.loads(json.dumps(base))
    raw["stages"]["evaluate"] = {"models": [str(out / "teacher"), str(out / "student_cr-ild")], "splits": ["dev"]}
    assert stage4_evaluate.run(from_dict(raw)) == 0
    results = json.loads((out / "eval" / "results.json").read_text())["models"]
    assert set(results) == {"teacher", "student_cr-ild"} and all(
        0 <= r["splits"]["dev"]["accuracy"] <= 1 for r in results.values())


def test_teacher_and_student_of_different_families_that_tokenize_alike(tmp_path, family_models, sentiment_dir):
    """A BERT teacher and a DistilBERT student share the WordPiece tokenizer: every term works."""
    raw = family_config(tmp_path, family_models["bert"], sentiment_dir, student=family_models["distilbert"],
                        preset="cr-ild")
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=no_stop()) == 0
    assert stage3_distill.run(cfg, stop=no_stop()) == 0
    student = Path(cfg.output_dir) / "student"
    assert json.loads((student / "config.json").read_text())["model_type"] == "distilbert"
    phases = json.loads((student / "train_results.json").read_text())["phases"]
    assert phases["ild"]["layer_pairs"] == [[2, 4]] and phases["ild"]["teacher_forwards"] > 0


def test_a_student_with_its_own_tokenizer_learns_from_logits_only(tmp_path, family_models, sentiment_dir, capsys):
    """A WordPiece BERT teacher, a byte-level BPE RoBERTa student: KD reads the teacher's
    logits on the teacher's own tokens of the same examples; a relation preset is refused."""
    bert, roberta = family_models["bert"], family_models["roberta"]
    raw = family_config(tmp_path, bert, sentiment_dir, student=roberta, preset="kd")
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=no_stop()) == 0
    assert stage3_distill.run(cfg, stop=no_stop()) == 0
    kd = json.loads((Path(cfg.output_dir) / "student" / "train_results.json").read_text())["phases"]["kd"]
    assert kd["teacher_forwards"] == 0  # logits computed once, on the teacher's own tokens, then cached

    raw["stages"]["distill"].update(preset="l-ild", output="student_lild")
    with pytest.raises(UserError, match=r"preset 'l-ild' needs teacher and student to tokenize alike \(qkv_relation "
                                        r"read them position by position\).*BertTokenizer.*RobertaTokenizer"):
        stage3_distill.run(from_dict(raw), stop=no_stop())
    assert not is_complete(Path(cfg.output_dir) / "student_lild")


def test_logits_stored_on_augmented_data_are_in_a_teachers_own_tokens(tmp_path, family_models, sentiment_dir,
                                                                      monkeypatch):
    """The augment stage stores a teacher's logits in its own tokens when it tokenizes otherwise
    than the student, as the KD phase reads them: it ran the BERT teacher on the RoBERTa
    student's token ids (an IndexError here, 400 ids for 59 embeddings; in general logits of
    the wrong text, which the KD phase then did not find)."""
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "home"))  # its own caches: it counts the stored logits
    from pipeline.data.sources import crild_home

    raw = family_config(tmp_path, family_models["bert"], sentiment_dir, student=family_models["roberta"], preset="kd",
                        augmented_phases=["kd"])
    raw["stages"]["augment"].update(teacher_logits=True, masked_lm=None)
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=no_stop()) == 0
    assert stage2_augment.run(cfg) == 0
    (stored,) = (crild_home() / "tokenized").glob("*/teacher_logits-*.safetensors")
    assert stage3_distill.run(cfg, stop=no_stop()) == 0
    kd = json.loads((Path(cfg.output_dir) / "student" / "train_results.json").read_text())["phases"]["kd"]
    assert kd["teacher_forwards"] == 0 and kd["examples"] > 32
    assert list((crild_home() / "tokenized").glob("*/teacher_logits-*.safetensors")) == [stored]


def test_same_tokenizer_is_decided_from_the_tokenizers_not_names(tmp_path, family_models):
    """Two folders with different names and the same tokenizer tokenize alike; the same
    vocabulary with another normalisation does not."""
    from pipeline.data.tokenized import tokenizer_fingerprint
    from pipeline.models.loading import load_tokenizer

    copy = write_tiny_family(tmp_path / "another-name", "electra")  # WordPiece, as the BERT one
    assert tokenizer_fingerprint(load_tokenizer(str(copy), "a")) == \
        tokenizer_fingerprint(load_tokenizer(str(family_models["bert"]), "b"))
    from helpers import VOCAB
    from transformers import BertTokenizerFast
    cased = tmp_path / "cased"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=False).save_pretrained(str(cased))
    assert tokenizer_fingerprint(load_tokenizer(str(cased), "c")) != \
        tokenizer_fingerprint(load_tokenizer(str(family_models["bert"]), "b"))
