"""A late stage's mistake is found before the first stage runs: ``crild run`` (and ``crild
submit``) make each stage's start-up checks from the configuration alone, so a chain of
teacher then distillation refuses a distillation setting in one line at once, with nothing
trained, instead of after the teacher."""
import json
import re
import shutil

import pytest
import yaml
from helpers import REPO, tiny_run_config, write_tiny_classifier, write_tiny_mlm

from pipeline import stage1_teacher
from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.launch.local import reads_output_of, stages_to_run
from pipeline.launch.preflight import check_stages
from pipeline.outputs.manifest import MANIFEST
from pipeline.training.ds_config import build_ds_config
from pipeline.training.stop import StopRequest

ZERO3 = str(REPO / "ds_configs" / "zero3_bf16.json")
SUFFIX = " (the distill stage's; checked before the first stage runs)"


def chain(tmp_path, tiny_bert, data, distill: dict, **top) -> dict:
    """Teacher then CR-ILD distillation of the tiny model: what a late mistake waits behind."""
    raw = tiny_run_config(tmp_path, tiny_bert, data, epochs=1)
    raw.update(**{"pipeline": ["teacher", "distill"], **top})
    raw["stages"]["distill"] = {"preset": "cr-ild", **distill}
    return raw


def refusal(tmp_path, raw: dict, capsys) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1, err
    assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "run" / "checkpoints").exists()
    return err[0]


def test_late_distillation_mistakes_are_refused_before_the_teacher_trains(tmp_path, tiny_bert, sentiment_dir, capsys):
    fixed_batch = tmp_path / "batch16.json"
    fixed_batch.write_text(json.dumps({"train_batch_size": 16, "zero_optimization": {"stage": 0}}))
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(tiny_bert, other_vocab)
    from transformers import BertTokenizerFast
    BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x"])}
                      ).save_pretrained(str(other_vocab))
    two_heads = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}
    cases = [
        ({"kd": {"on_nonfinite": "skip", "deepspeed_config": ZERO3}}, {},
         f"stages.distill.kd.on_nonfinite: skip is not supported with ZeRO-3 ({ZERO3}); use stop, or ZeRO 0-2"),
        ({"kd": {"deepspeed_config": str(fixed_batch), "batch_size": 8}}, {},
         f"{fixed_batch}: train_batch_size=16 contradicts world size 1 x micro batch 8 x gradient accumulation 1 = 8; "
         f"set it to \"auto\""),
        ({"ild": {"deepspeed_config": ZERO3}}, {"compile": True},
         f"{tmp_path / 'run.yaml'}: compile: true is not supported with ZeRO-3; use ZeRO 0-2, or set compile: false"),
        ({"ild_terms": {"attention_kl": 1}}, {"student": {"init": "random", "backbone": str(tiny_bert),
                                                          "random_init": two_heads}},
         "stages.distill: term 'attention_kl' needs equal attention-head counts, teacher has 4, student 2"),
        ({"layer_map": "uniform"}, {"student": {"init": "random", "backbone": str(tiny_bert),
                                                "random_init": {**two_heads, "num_layers": 6, "num_heads": 4}}},
         "stages.distill.layer_map: uniform maps the student's 6 layers onto distinct teacher layers, and the teacher "
         "has 4; use a deeper teacher, layer_map last, or layer_map pairs"),
        ({"relation_heads": 5}, {}, "stages.distill.relation_heads: 5 relation heads do not divide the teacher's "
                                    "hidden size 32"),
        ({}, {"student": {"init": "folder", "backbone": str(other_vocab)}},
         "stages.distill: preset 'cr-ild' needs teacher and student to tokenize alike (mixup, qkv_relation read them "
         f"position by position), and they do not: teacher '{tiny_bert}' (BertTokenizer, 59 tokens), student "
         f"'{other_vocab}' (BertTokenizer, 6 tokens)"),
    ]
    for distill, top, message in cases:
        line = refusal(tmp_path, chain(tmp_path, tiny_bert, sentiment_dir, distill, **top), capsys)
        assert line.startswith(f"crild: error: {message}") and line.endswith(SUFFIX), line


def assert_listed_model_refused(tmp_path, tiny_bert, data, capsys, model, why: str) -> None:
    """``model`` listed to evaluate, then to export, after a teacher stage: refused with ``why``
    before the teacher trains."""
    for stage in ("evaluate", "export"):
        raw = chain(tmp_path, tiny_bert, data, {})
        raw["pipeline"] = ["teacher", stage]
        raw["stages"][stage] = {"models": [str(model)]}
        assert refusal(tmp_path, raw, capsys) == (f"crild: error: stages.{stage}.models[0]: {why} (the {stage} "
                                                  f"stage's; checked before the first stage runs)")


def test_a_backbone_where_a_later_stage_needs_a_trained_classifier_is_refused_before_the_teacher_trains(
        tmp_path, tiny_bert, sentiment_dir, capsys):
    """A backbone (no classifier head) named as the distillation's teacher where a term reads
    its predictions, or as a model to evaluate or export: before, the line came when that
    stage loaded it, after the teacher had trained. Its weights' headers say so at once. A
    teacher read for its layers alone may be a backbone (task-agnostic distillation)."""
    lacks = (f"'{tiny_bert}' is not a classifier trained for task rotten_tomatoes: its weights lack classifier.bias, "
             f"classifier.weight, which would start random; fine-tune it first (the teacher stage) or give a fine-tuned "
             f"folder")
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {"teacher_model": str(tiny_bert)})
    assert refusal(tmp_path, raw, capsys) == f"crild: error: stages.distill.teacher_model: {lacks}{SUFFIX}"
    assert_listed_model_refused(tmp_path, tiny_bert, sentiment_dir, capsys, tiny_bert, lacks)
    check_stages(from_dict(chain(tmp_path, tiny_bert, sentiment_dir, {"teacher_model": str(tiny_bert),
                                                                      "phases": ["ild"]})), ["teacher", "distill"], 1)


def test_a_classifier_for_another_label_count_is_refused_before_the_teacher_trains(tmp_path, tiny_bert,
                                                                                   sentiment_dir, capsys):
    """A classifier trained for another task (STS-B's one score against Rotten Tomatoes' two
    classes) named as the distillation's teacher, the student's backbone, or a model to
    evaluate or export: each stage refused it as it loaded it, so a chain trained its teacher
    first. The label count is in config.json, read at once."""
    scorer = write_tiny_classifier(tiny_bert, tmp_path / "scorer", task="stsb")
    wrong = f"'{scorer}' is a classifier with 1 output (LABEL_0); task rotten_tomatoes needs 2"
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {"teacher_model": str(scorer)})
    assert refusal(tmp_path, raw, capsys) == f"crild: error: stages.distill.teacher_model: {wrong}{SUFFIX}"
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["student"]["backbone"] = str(scorer)
    assert refusal(tmp_path, raw, capsys) == f"crild: error: student.backbone: {wrong}{SUFFIX}"
    assert_listed_model_refused(tmp_path, tiny_bert, sentiment_dir, capsys, scorer, wrong)
    right = write_tiny_classifier(tiny_bert, tmp_path / "sentiment")  # the task's own label count passes
    check_stages(from_dict(chain(tmp_path, tiny_bert, sentiment_dir, {"teacher_model": str(right)})),
                 ["teacher", "distill"], 1)


def test_an_earlier_stages_output_that_no_stage_of_the_run_writes_is_refused_before_the_first(
        tmp_path, tiny_bert, sentiment_dir, capsys):
    """A stage reads what an earlier stage wrote: the teacher trained, then the distillation
    stopped for augmented data that no stage of the run was to make. A stage that scores the
    run's models needs one of them; one there, or one a stage before it writes, is enough."""
    run = tmp_path / "run"
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {"augmented_phases": ["kd"]})
    assert refusal(tmp_path, raw, capsys) == (
        f"crild: error: {run / 'augmented'}: no complete output of the augment stage, and no augment stage runs "
        f"before distill to write it; add augment to pipeline before distill (or run it first), or set "
        f"stages.distill.augmented_phases: []{SUFFIX}")
    raw["pipeline"] = ["teacher", "augment", "distill"]
    check_stages(from_dict(raw), raw["pipeline"], 1)  # the augment stage writes it first
    scoring = chain(tmp_path, tiny_bert, sentiment_dir, {}, pipeline=["evaluate"])
    assert refusal(tmp_path, scoring, capsys) == (
        f"crild: error: {run}: none of teacher/, student/, student_finetuned/ is complete, and no stage that writes "
        f"one runs before evaluate; add one to pipeline before evaluate (or run one first), or set "
        f"stages.evaluate.models (the evaluate stage's; checked before the first stage runs)")
    check_stages(from_dict({**scoring, "pipeline": ["teacher", "evaluate"]}), ["teacher", "evaluate"], 1)
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    check_stages(from_dict(scoring), ["evaluate"], 1)  # the teacher is there: the others are left out as before
    with pytest.raises(UserError, match="no complete output of the augment stage"):
        check_stages(from_dict(raw), ["distill"], 1)  # a complete teacher is not augmented data


def test_a_student_larger_than_its_teacher_is_named_in_a_note(tmp_path, tiny_bert, sentiment_dir, capsys):
    """Teacher and student swapped in a file (or a student built larger by mistake) trains
    without complaint; crild says so once its checks have passed, and says nothing otherwise
    (a run refused for the larger student stays one line: the uniform case above)."""
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    main(["config", str(path)])
    assert "note: the student" not in capsys.readouterr().err  # 2 layers of the teacher's 4
    raw["student"] = {"init": "random", "backbone": str(tiny_bert),
                      "random_init": {"num_layers": 6, "hidden_size": 64, "num_heads": 4, "intermediate_size": 64}}
    path.write_text(yaml.safe_dump(raw))
    main(["config", str(path)])
    notes = [line for line in capsys.readouterr().err.splitlines() if "note: the student" in line]
    assert notes == [f"crild: note: the student is deeper (6 layers to 4) and wider (hidden 64 to 32) than the "
                     f"teacher (teacher.model: {tiny_bert}); distillation trains a smaller student from a larger "
                     f"teacher, so check that the two are not swapped"]
    raw["stages"]["distill"]["preset"] = "kd"  # wider alone, and the run's teacher read where it is complete
    raw["student"]["random_init"]["num_layers"] = 2
    raw["pipeline"] = ["distill"]
    path.write_text(yaml.safe_dump(raw))
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    main(["config", str(path)])
    notes = [line for line in capsys.readouterr().err.splitlines() if "note: the student" in line]
    assert notes == [f"crild: note: the student is wider (hidden 64 to 32) than the teacher "
                     f"(stages.distill.teacher_model: {tmp_path / 'run' / 'teacher'}); distillation trains a smaller "
                     f"student from a larger teacher, so check that the two are not swapped"]


def test_crild_config_prints_what_each_distillation_phase_trains(tmp_path, tiny_bert, sentiment_dir, capsys):
    """The preset's phases, terms, mixup, consistency and layer pairs, which the
    configuration leaves null for the preset to decide, follow it as YAML comments."""
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {"augmented_phases": ["kd"]},
                pipeline=["teacher", "augment", "distill", "baseline"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    main(["config", str(path)])
    out = capsys.readouterr().out
    assert out.splitlines()[-5:] == [
        "# stages.distill, as preset cr-ild resolves it:",
        "#   ild: loss 1 x qkv_relation; mixup, consistency weight 0.1; layers 2<-4 (student<-teacher); reads the "
        "task's training set",
        "#   kd: loss 1 x logit_kd; reads the augmented training set (stage augment)",
        "# stages.baseline, as preset finetune resolves it:",
        "#   kd: loss 1 x ce; reads the task's training set"]
    assert yaml.safe_load(out)["stages"]["distill"]["preset"] == "cr-ild"  # still the configuration, as YAML
    raw["stages"]["distill"].update(preset="tinybert", supplementary=[{"task": {"name": "rotten_tomatoes", "data_dir":
                                                                                str(sentiment_dir)}, "ratio": 0.5}])
    path.write_text(yaml.safe_dump({**raw, "pipeline": ["teacher", "augment", "distill"]}))
    main(["config", str(path)])
    assert capsys.readouterr().out.splitlines()[-4:] == [
        "# stages.distill, as preset tinybert resolves it:",
        "#   ild_supplementary: loss 1 x attention_kl + 1 x hidden_mse; layers 0<-0, 1<-2, 2<-4 (student<-teacher); "
        "reads the supplementary tasks' training sets (rotten_tomatoes)",
        "#   ild: loss 1 x attention_kl + 1 x hidden_mse; layers 0<-0, 1<-2, 2<-4 (student<-teacher); reads the "
        "task's training set",
        "#   kd: loss 1 x logit_kd; reads the augmented training set (stage augment)"]


def test_a_max_length_beyond_the_teachers_or_students_positions_is_refused_before_the_first_stage(
        tmp_path, tiny_bert, sentiment_dir, capsys):
    """The stage that builds the model found it: for the student or a model to score, after the
    teacher had trained."""
    short = tmp_path / "short-positions"
    shutil.copytree(tiny_bert, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    student = {"init": "random", "backbone": str(short),
               "random_init": {"num_layers": 1, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64}}
    cases = [({"task": {"max_length": 100}}, "task.max_length: 100 exceeds teacher's 64 position embeddings "
                                             "(the teacher stage's; checked before the first stage runs)"),
             ({"student": student}, "task.max_length: 32 exceeds student's 16 position embeddings" + SUFFIX)]
    for top, message in cases:
        raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
        raw.update(student=top.get("student", raw["student"]))
        raw["task"].update(top.get("task", {}))
        assert refusal(tmp_path, raw, capsys) == f"crild: error: {message}"
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["pipeline"], raw["stages"]["evaluate"] = ["teacher", "evaluate"], {"models": [str(short)]}
    assert refusal(tmp_path, raw, capsys) == (f"crild: error: task.max_length: 32 exceeds {short}'s 16 position "
                                              f"embeddings (the evaluate stage's; checked before the first stage runs)")


def test_a_file_given_for_a_folder_is_refused_before_the_first_stage(tmp_path, tiny_bert, sentiment_dir, capsys,
                                                                      monkeypatch):
    """A model or data folder given as a file (a model's config.json, a data file) passed the
    existence check; the stage that read it found it, the evaluation after the teacher had trained.
    Offline data not prepared is named then too."""
    config = str(tiny_bert / "config.json")
    train = str(sentiment_dir / "train.jsonl")
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["pipeline"], raw["stages"]["evaluate"] = ["teacher", "evaluate"], {"models": [config]}
    assert refusal(tmp_path, raw, capsys) == (
        f"crild: error: stages.evaluate.models[0]: '{config}' is a file; expected a model folder (config.json and "
        f"weights) (the evaluate stage's; checked before the first stage runs)")
    for key, section in (("teacher.model", "teacher"), ("student.backbone", "student")):
        raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
        raw[section] = {**raw[section], key.split(".")[1]: config}
        line = refusal(tmp_path, raw, capsys)
        assert line.startswith(f"crild: error: {key}: '{config}' is a file; expected a model folder"), line
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["task"]["data_dir"] = train
    line = refusal(tmp_path, raw, capsys)
    assert line.startswith(f"crild: error: task.data_dir: '{train}' is a file; expected the folder that holds the "
                           f"split files") and line.endswith("(checked before the first stage runs)"), line
    raw["task"].pop("data_dir")  # the offline Rotten Tomatoes, in a crild home that has not prepared it
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "fresh-home"))
    assert refusal(tmp_path, raw, capsys) == (
        f"crild: error: {tmp_path / 'fresh-home' / 'data' / 'rotten_tomatoes'}: offline data for task "
        f"'rotten_tomatoes' is not prepared; run `crild prepare-data` (tools/setup.sh does) (checked before the first "
        f"stage runs)")


def test_a_late_student_augmentation_or_export_mistake_is_refused_before_the_teacher_trains(
        tmp_path, tiny_bert, sentiment_dir, monkeypatch, capsys):
    import sys

    other_vocab = write_tiny_mlm(tmp_path / "other-vocab", tiny_bert)
    from transformers import BertTokenizerFast
    BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x"])}
                      ).save_pretrained(str(other_vocab))
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    cases = [(["teacher", "baseline"], {"student": {**raw["student"], "num_layers": 9}},
              "student.num_layers: 9 is not between 1 and the backbone's 4 layers (the baseline stage's; "),
             (["teacher", "augment"], {"stages": {**raw["stages"], "augment": {"masked_lm": str(other_vocab)}}},
              f"stages.augment.masked_lm: '{other_vocab}' has a different vocabulary from student.backbone "
              f"'{tiny_bert}' (the augment stage's; "),
             (["teacher", "augment"], {"stages": {**raw["stages"], "augment": {"masked_lm": str(tiny_bert)}}},
              f"stages.augment.masked_lm: '{tiny_bert}' has no masked-LM head (no cls.* weights); a plain encoder "
              f"cannot propose words (the augment stage's; ")]
    # word vectors: a text file whose first lines are not GloVe's, a .npy of pickled objects,
    # a .npy with fewer words than rows (Parquet metadata), all read without the vectors
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (text := tmp_path / "glove.txt").write_text("the 0.1 0.2\nof 0.3 zero\n")
    np.save(pickled := tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(matrix := tmp_path / "m.npy", np.zeros((3, 4), dtype=np.float32))
    pq.write_table(pa.table({"word": ["a", "b"]}), words := tmp_path / "words.parquet")
    for vectors, message in (({"path": str(text)}, f"{text}:2: expected 'word v1 v2 ...' with numbers"),
                             ({"path": str(pickled)}, f"{pickled}: not a NumPy .npy matrix of numbers (it holds "
                                                      f"pickled objects, which crild does not load)"),
                             ({"path": str(matrix), "vocab": str(words)},
                              f"stages.augment.vectors.vocab: 2 words for 3 vectors in '{matrix}'")):
        cases.append((["teacher", "augment"], {"stages": {**raw["stages"], "augment": {"vectors": vectors}}},
                      message))
    for pipeline, edit, message in cases:
        line = refusal(tmp_path, {**raw, **edit, "pipeline": pipeline}, capsys)
        assert line.startswith(f"crild: error: {message}"), line
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    line = refusal(tmp_path, {**raw, "pipeline": ["teacher", "evaluate", "export"]}, capsys)
    assert line == ("crild: error: stages.export: ONNX Runtime is not installed; pip install onnxruntime onnx "
                    "(tools/setup.sh does) (the export stage's; checked before the first stage runs)")


def test_a_held_out_split_the_data_lacks_is_refused_before_the_teacher_trains(tmp_path, tiny_bert, sentiment_dir,
                                                                              capsys):
    """stages.evaluate.splits and stages.export.split name splits of the task's data; a
    hub user's 'validation' (crild's 'dev') was refused only after the teacher had trained."""
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    source = tmp_path / "run.yaml"
    line = refusal(tmp_path, {**raw, "pipeline": ["teacher", "evaluate"],
                              "stages": {**raw["stages"], "evaluate": {"splits": ["dev", "validation"]}}}, capsys)
    assert line == (f"crild: error: {source}: stages.evaluate.splits: 'validation' is not a held-out split of task "
                    f"rotten_tomatoes "
                    f"(available: dev, test); crild calls the hub's 'validation' split 'dev' (the evaluate stage's; "
                    f"checked before the first stage runs)")
    line = refusal(tmp_path, {**raw, "pipeline": ["teacher", "export"],
                              "stages": {**raw["stages"], "export": {"split": "tst"}}}, capsys)
    assert line == (f"crild: error: {source}: stages.export.split: 'tst' is not a held-out split of task "
                    f"rotten_tomatoes (available: dev, test) (the export stage's; checked before the first stage runs)")


def test_an_export_name_that_is_another_models_int8_copy_is_refused_before_the_teacher_trains(
        tmp_path, tiny_bert, tiny_teacher, sentiment_dir, capsys):
    """A model listed for export under the name of another's INT8 copy (student, student-int8)
    is refused when the chain starts, not when export comes after the training."""
    mine = shutil.copytree(tiny_teacher, tmp_path / "mine" / "student-int8")
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["pipeline"] = ["teacher", "export"]
    raw["stages"]["export"] = {"models": [str(tmp_path / "run" / "student"), str(mine)]}
    assert refusal(tmp_path, raw, capsys) == (
        "crild: error: stages.export.models: the model named 'student-int8' has the folder name of student's INT8 "
        "copy (export/student-int8); rename its folder, or set stages.export.quantize: false (the export stage's; "
        "checked before the first stage runs)")


def test_data_a_later_stage_reads_is_read_through_before_the_teacher_trains(tmp_path, tiny_bert, sentiment_dir,
                                                                           capsys):
    """The test split only evaluation scores, and a supplementary task's files only
    distillation reads: a record the reader refuses, or a folder without the split, was
    found after the teacher had trained."""
    data = shutil.copytree(sentiment_dir, tmp_path / "data")
    with open(data / "test.jsonl", "a") as f:
        f.write('{"sentence": "fine", "label": "meh"}\n')
    line = sum(1 for _ in open(data / "test.jsonl"))
    raw = chain(tmp_path, tiny_bert, data, {})
    assert refusal(tmp_path, {**raw, "pipeline": ["teacher", "evaluate"]}, capsys) == (
        f"crild: error: {data / 'test.jsonl'}:{line}: label 'meh' is not one of rotten, fresh, or their ids 0-1 (task "
        f"rotten_tomatoes) (the evaluate stage reads it; checked before the first stage runs)")
    assert refusal(tmp_path, {**raw, "pipeline": ["teacher", "export"]}, capsys).startswith(
        f"crild: error: {data / 'test.jsonl'}:{line}: label 'meh'")  # export is checked on test
    (empty := tmp_path / "empty").mkdir()
    for supplement, expected in (
            ({"name": "rotten_tomatoes", "data_dir": str(empty)},
             f"{empty}: no train.jsonl, train.csv, train.tsv or train.parquet for task rotten_tomatoes"),
            ({"name": "rotten_tomatoes", "data_dir": str(sentiment_dir), "few_sample": 1000},
             "stages.distill.supplementary[0].task.few_sample: 1000 examples asked for, and the training set has 96")):
        distill = {"phases": ["ild_supplementary", "ild"], "supplementary": [{"task": supplement}]}
        assert refusal(tmp_path, chain(tmp_path, tiny_bert, sentiment_dir, distill), capsys).startswith(
            f"crild: error: {expected}")
    # the first stage's own files are left to it, as it reads them at once (no second read) ...
    scored = str(write_tiny_classifier(tiny_bert, tmp_path / "classifier"))
    first = from_dict({**raw, "pipeline": ["evaluate"], "stages": {"evaluate": {"models": [scored]}}})
    check_stages(first, ["evaluate"], 1)
    # ... but not where its job may start hours later, after the queue (crild submit; crild config checks as it does)
    with pytest.raises(UserError, match=rf"^{re.escape(str(data / 'test.jsonl'))}:{line}: label 'meh' .* \(the "
                                        rf"evaluate stage reads it; checked before the first stage runs\)$"):
        check_stages(first, ["evaluate"], 1, device_checks=False)


def test_a_truncated_weights_file_any_stage_reads_is_refused_before_the_first_stage(tmp_path, tiny_bert,
                                                                                   sentiment_dir, capsys):
    """A copy or download cut short, for every key naming a model whose weights a stage
    reads: found from the safetensors header before the teacher trains, not when the stage
    that reads it starts."""
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_bert, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_bert, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    t, scored = str(truncated), str(write_tiny_classifier(tiny_bert, tmp_path / "classifier"))
    damaged = f"cannot load the model in '{t}' (Error while deserializing header: incomplete metadata"
    cases = [(["teacher"], {"teacher": {"model": t}}, f"teacher.model: {damaged}", "teacher"),
             (["teacher", "distill"], {"student": {"init": "folder", "backbone": t}},
              f"student.backbone: {damaged}", "distill"),
             (["teacher", "baseline"], {"student": {"init": "truncated", "backbone": str(sharded), "num_layers": 1}},
              f"student.backbone: model folder '{sharded}' has no model-00002-of-00002.safetensors (named in "
              f"model.safetensors.index.json)", "baseline"),
             (["distill"], {"stages": {**raw["stages"], "distill": {"preset": "cr-ild", "teacher_model": t}}},
              f"stages.distill.teacher_model: {damaged}", "distill"),
             (["teacher", "augment"], {"stages": {**raw["stages"], "augment": {"masked_lm": t}}},
              f"stages.augment.masked_lm: {damaged}", "augment"),
             (["teacher", "evaluate"], {"stages": {**raw["stages"], "evaluate": {"models": [scored, t]}}},
              f"stages.evaluate.models[1]: {damaged}", "evaluate"),
             (["teacher", "export"], {"stages": {**raw["stages"], "export": {"models": [t]}}},
              f"stages.export.models[0]: {damaged}", "export")]
    for pipeline, edit, message, stage in cases:
        line = refusal(tmp_path, {**raw, **edit, "pipeline": pipeline}, capsys)
        assert line.startswith(f"crild: error: {message}") and f"(the {stage} stage's; " in line, line


def test_crild_config_refuses_what_crild_run_refuses_before_its_first_stage(tmp_path, tiny_bert, sentiment_dir,
                                                                          capsys):
    """``crild config`` validates: a file it prints is one ``crild run`` starts, and one it
    refuses is refused by ``crild run`` with the same line (the checks before the first
    stage, from the files' presence to a late stage's DeepSpeed config)."""
    quoted = tmp_path / "quoted.json"
    quoted.write_text(json.dumps({"zero_optimization": {"stage": 0}, "steps_per_print": "10"}))
    for raw in (chain(tmp_path, tiny_bert, sentiment_dir, {"relation_heads": 5}),
                chain(tmp_path, tiny_bert, sentiment_dir, {"kd": {"deepspeed_config": str(quoted)}}),
                {**chain(tmp_path, tiny_bert, sentiment_dir, {}), "teacher": {"model": str(tmp_path / "nowhere")}}):
        run_line = refusal(tmp_path, raw, capsys)
        with pytest.raises(SystemExit) as done:
            main(["config", str(tmp_path / "run.yaml")])
        assert done.value.code == 2 and capsys.readouterr().err.strip() == run_line
    (fresh := tmp_path / "fresh").mkdir()
    (fresh / "run.yaml").write_text(yaml.safe_dump(chain(fresh, tiny_bert, sentiment_dir, {})))
    main(["config", str(fresh / "run.yaml")])
    out = capsys.readouterr()
    assert "preset: cr-ild" in out.out and out.err == "" and not (fresh / "run").exists()


def test_distillation_without_a_teacher_stage_or_folder_is_refused_first(tmp_path, tiny_bert, sentiment_dir, capsys):
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    raw["pipeline"] = ["augment", "distill"]
    raw["stages"]["distill"]["augmented_phases"] = []
    line = refusal(tmp_path, raw, capsys)
    assert line == (f"crild: error: {tmp_path / 'run' / 'teacher'}: no complete teacher; run the teacher stage first "
                    f"(crild run, or stage1_teacher.py) or set stages.distill.teacher_model{SUFFIX}")
    assert not (tmp_path / "run" / "augmented").exists()


def test_a_changed_teacher_redoes_the_stages_that_read_it_and_keeps_the_baseline(tmp_path, tiny_bert, sentiment_dir):
    """crild run redoes a stale stage and every later one that reads its output, which that
    run changes; crild status says so of those (it said "complete", as if only the teacher
    would train again). The baseline reads no teacher and stays: before, every stage after
    the first that ran was redone, a whole student's training for a changed teacher setting."""
    from pipeline import stage3_distill, stage4_evaluate
    from pipeline.config import stage_config
    from pipeline.launch.status import status_lines

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["pipeline"] = ["teacher", "baseline", "evaluate"]
    raw["stages"]["baseline"] = {"epochs": 1, "batch_size": 8}
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    assert stage3_distill.run(stage_config(from_dict(raw), "baseline"), stop=StopRequest(install_handlers=False)) == 0
    assert stage4_evaluate.run(from_dict(raw)) == 0
    assert status_lines(from_dict(raw))[1:] == ["  teacher   complete", "  baseline  complete", "  evaluate  complete"]
    raw["stages"]["teacher"]["learning_rate"] = 2e-3
    changed = from_dict(raw)
    assert stages_to_run(changed, changed.pipeline) == ["teacher", "evaluate"]
    assert status_lines(changed)[1:] == [
        "  teacher   stale (written for another configuration or other inputs; crild run redoes it)",
        "  baseline  complete",
        "  evaluate  complete for now; crild run redoes it after teacher, whose output it reads"]
    assert stage1_teacher.run(changed, stop=StopRequest(install_handlers=False)) == 0  # crild run's first stage
    assert stages_to_run(changed, ["baseline", "evaluate"]) == ["evaluate"]  # the retrained teacher left it current
    # a model named by its path in a stage's output is read as that stage's output
    raw["stages"]["evaluate"] = {"models": [str(tmp_path / "run" / "student_finetuned")]}
    assert reads_output_of(from_dict(raw), "evaluate", "baseline")
    assert not reads_output_of(from_dict(raw), "evaluate", "teacher")


def test_the_baselines_fingerprint_holds_neither_the_teacher_nor_the_ild_settings(tmp_path, tiny_bert, sentiment_dir):
    """The baseline trains without a teacher and runs no ILD phase: a retrained teacher or a
    changed ILD setting leaves it current, where it trained the student again."""
    from pipeline.config import stage_config
    from pipeline.stages import stage_fingerprint

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["stages"]["distill"] = {"preset": "cr-ild", "ild": {"epochs": 1}}

    def fingerprints(**ild):
        cfg = from_dict({**raw, "stages": {**raw["stages"], "distill": {**raw["stages"]["distill"], "ild": ild}}})
        return stage_fingerprint(stage_config(cfg, "baseline"), "baseline"), stage_fingerprint(cfg, "distill")

    baseline, distill = fingerprints(epochs=1)
    assert fingerprints(epochs=2)[0] == baseline and fingerprints(epochs=2)[1] != distill
    teacher = tmp_path / "run" / "teacher"  # a teacher output recorded (retrained): the distillation reads it
    teacher.mkdir(parents=True)
    (teacher / MANIFEST).write_text(json.dumps({"stage": "teacher", "status": "complete", "fingerprint": "f" * 16}))
    assert fingerprints(epochs=1)[0] == baseline and fingerprints(epochs=1)[1] != distill


def test_a_complete_teacher_is_skipped_and_checked_as_it_is_and_its_settings_are_not_resolved(tmp_path, tiny_bert,
                                                                                  sentiment_dir, monkeypatch):
    """--only distill after the teacher trained: the teacher folder is what distillation reads,
    so a teacher.model this machine cannot resolve (a hub name on a node without network)
    does not matter, while the folder's own shape does."""
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    # a complete stage before the first that runs is skipped, and not judged again on this machine
    assert stages_to_run(from_dict(raw), ["teacher", "distill"]) == ["distill"]
    assert stages_to_run(from_dict(raw), ["teacher", "distill"], force=True) == ["teacher", "distill"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_stages(from_dict({**raw, "teacher": {"model": "crild-test/not-cached"}}), ["distill"], 1)
    student = {"init": "random", "backbone": str(tiny_bert),
               "random_init": {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}}
    wrong = chain(tmp_path, tiny_bert, sentiment_dir, {"ild_terms": {"attention_kl": 1}}, student=student)
    with pytest.raises(UserError, match="teacher has 4, student 2"):
        check_stages(from_dict(wrong), ["distill"], 1)


def test_what_only_the_training_machine_or_the_data_can_say_is_left_to_the_stage(tmp_path, tiny_bert,
                                                                                 sentiment_dir):
    """crild submit on a login node: fp16 is not judged by that node's devices. Before the
    data is read the step count is unknown: a fixed total_num_steps waits for the stage."""
    fp16 = tmp_path / "fp16.json"
    fp16.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 0}}))
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {}, deepspeed_config=str(fp16))
    check_stages(from_dict(raw), ["teacher", "distill"], 2, device_checks=False)
    with pytest.raises(UserError, match="fp16.enabled is true, but DeepSpeed supports fp16 only on GPUs"):
        check_stages(from_dict(raw), ["teacher"], 2)

    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"zero_optimization": {"stage": 0}, "optimizer": {"type": "AdamW", "params": {}},
                                 "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 1000}}}))
    train = from_dict(raw).stages.teacher
    built = build_ds_config(str(steps), train, 1, None, "run.yaml", "teacher", hidden_size=32)
    assert built["scheduler"]["params"]["total_num_steps"] == 1000
    with pytest.raises(UserError, match="total_num_steps=1000 contradicts the stage's step count=12"):
        build_ds_config(str(steps), train, 1, 12, "run.yaml", "teacher", hidden_size=32)


def test_a_model_folder_without_a_tokenizer_is_refused_before_the_first_stage(tmp_path, tiny_bert, sentiment_dir,
                                                                            capsys):
    """A Trainer checkpoint saved without its tokenizer, as the teacher, the student's
    backbone or a model to score: refused when the chain starts (crild submit: before the
    queue), as the stage would refuse it."""
    bare = shutil.copytree(tiny_bert, tmp_path / "checkpoint-500")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    raw = chain(tmp_path, tiny_bert, sentiment_dir, {})
    expected = (f"cannot load a tokenizer from '{bare}' (none of tokenizer.json, vocab.txt, vocab.json, spm.model, "
                f"sentencepiece.bpe.model, tokenizer.model there; a checkpoint saved without its tokenizer needs "
                f"tokenizer.save_pretrained into it)")
    for edit, key, stage in (({"teacher": {"model": str(bare)}}, "teacher.model", "teacher"),
                             ({"student": {**raw["student"], "backbone": str(bare)}}, "student.backbone", "distill"),
                             ({"pipeline": ["evaluate"], "stages": {"evaluate": {"models": [str(bare)]}}},
                              "stages.evaluate.models[0]", "evaluate")):
        assert refusal(tmp_path, {**raw, **edit}, capsys) == (
            f"crild: error: {key}: {expected} (the {stage} stage's; checked before the first stage runs)")
