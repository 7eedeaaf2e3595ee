"""The catalogue of bad inputs (docs/bad-inputs.md) through the `crild` command: each exits
with code 2 and one line that names the file, key or value, prints no traceback, and leaves
no output that looks complete."""
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, tiny_run_config, write_hub_copy, write_tiny_classifier

from pipeline.cli import main
from pipeline.outputs.manifest import is_complete


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def case_config(tmp, tiny_bert, data, **edit):
    raw = tiny_run_config(tmp, tiny_bert, data)
    for dotted, value in edit.items():
        node = raw
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def cases(tmp: Path, tiny_bert: Path, data: Path):
    """(name, argv, fragments the message must contain)."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    bad_dir = tmp / "bad-data"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    (bad_dir / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    labels_dir = tmp / "bad-labels"
    labels_dir.mkdir(exist_ok=True)
    (labels_dir / "train.jsonl").write_text('{"sentence": "a", "label": "fresh"}\n{"sentence": "b", "label": "meh"}\n')
    empty_dir = tmp / "empty"
    empty_dir.mkdir(exist_ok=True)
    (empty_dir / "train.jsonl").write_text("")
    no_weights = tmp / "no-weights"
    shutil.copytree(tiny_bert, no_weights, dirs_exist_ok=True)
    (no_weights / "model.safetensors").unlink(missing_ok=True)
    pickled = tmp / "pickled"
    shutil.copytree(no_weights, pickled, dirs_exist_ok=True)
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    ds_batch = tmp / "ds_batch.json"
    ds_batch.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 0}}))
    ds_fp16 = tmp / "ds_fp16.json"
    ds_fp16.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 0}}))
    ds_broken = tmp / "ds_broken.json"
    ds_broken.write_text("{ not json")
    other_vocab = tmp / "other-vocab"
    shutil.copytree(tiny_bert, other_vocab, dirs_exist_ok=True)
    from transformers import BertTokenizerFast
    BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x"])}
                      ).save_pretrained(str(other_vocab))
    return [
        ("unknown key", ["config", cfg("k1", stages__teacher__colour=1)], ["stages.teacher.colour", "valid keys"]),
        ("misspelled key", ["config", cfg("k2", stages__teacher__learnig_rate=1e-3)], ["did you mean 'learning_rate'"]),
        ("wrong type", ["config", cfg("k3", stages__teacher__epochs="two")], ["stages.teacher.epochs", "an integer"]),
        ("missing config file", ["config", str(tmp / "nope.yaml")], ["nope.yaml: config file not found"]),
        ("config path is a folder", ["run", str(tmp)], [f"{tmp}: is a folder; expected a config file (YAML)"]),
        ("invalid YAML", ["config", str(_text(tmp / "broken.yaml", "a: [1\n"))], ["broken.yaml", "not valid YAML"]),
        # read as {} it started the default run (the whole pipeline on the offline model)
        ("config file with no settings", ["run", str(_text(tmp / "blank.yaml", "# task:\n#   name: sst2\n\n"))],
         ["blank.yaml: has no settings", "write {} in it to take every default"]),
        ("bad override", ["config", cfg("k4"), "seed"], ["override 'seed'", "section.key=value"]),
        ("a second configuration file", ["run", cfg("k4c"), "other.yaml"],
         ["crild: error: override 'other.yaml': expected section.key=value; a command reads one configuration file, "
          "and this looks like a second"]),
        # the value is the command line's, not the file's: the line names the override
        ("override of the wrong type", ["config", cfg("k4b"), "stages.teacher.epochs=many"],
         ["crild: error: override 'stages.teacher.epochs=...': stages.teacher.epochs: expected an integer, got 'many'"]),
        ("unknown task", ["config", cfg("k5", task__name="sst3")], ["unknown task 'sst3'", "did you mean 'sst2'"]),
        ("task of one's own with a metric that does not fit", ["config", cfg(
            "k5b", task={"name": "tone", "labels": ["a", "b", "c"], "metric": "accuracy_f1", "data_dir": str(data)})],
         ["task.metric: accuracy_f1 is the F1 of the second of two labels, and task tone has 3; use macro_f1"]),
        ("ratio out of range", ["config", cfg("k6", task__label_noise=1.5)], ["task.label_noise", "[0, 1)"]),
        ("unknown preset", ["config", cfg("k7", stages__distill={"preset": "crild"})], ["did you mean 'cr-ild'"]),
        ("unknown loss term", ["config", cfg("k8", stages__distill={"ild_terms": {"hiden_mse": 1}})],
         ["did you mean 'hidden_mse'"]),
        ("missing data directory", ["teacher", cfg("d1", task__data_dir=str(tmp / "nowhere"))],
         ["nowhere' does not exist"]),
        ("empty path", ["teacher", cfg("d5", task__data_dir="")],
         ["d5.yaml: task.data_dir: expected a file or folder path, got ''"]),
        ("TSV without a column", ["teacher", cfg("d2", task__name="rte", task__data_dir=str(bad_dir))],
         ["train.tsv", "missing column 'sentence2'"]),
        ("label outside the label set", ["teacher", cfg("d3", task__data_dir=str(labels_dir))],
         ["train.jsonl:2", "'meh'", "rotten, fresh"]),
        ("empty dataset", ["teacher", cfg("d4", task__data_dir=str(empty_dir))], ["train.jsonl: no examples"]),
        ("max length beyond positions", ["teacher", cfg("m1", task__max_length=512)],
         ["task.max_length: 512 exceeds teacher's 64 position embeddings"]),
        ("model folder without weights", ["teacher", cfg("m2", teacher={"model": str(no_weights)})],
         ["no-weights' has no weights"]),
        ("pickle-only weights", ["teacher", cfg("m3", teacher={"model": str(pickled)})], ["safetensors only"]),
        ("missing model folder", ["teacher", cfg("m4", teacher={"model": str(tmp / "no-model")})],
         ["no-model' does not exist"]),
        ("batch size contradicts world size", ["teacher", cfg("s1", deepspeed_config=str(ds_batch))],
         ["ds_batch.json: train_batch_size=999 contradicts world size 1"]),
        ("fp16 on a CPU", ["teacher", cfg("s2", deepspeed_config=str(ds_fp16))], ["fp16.enabled", "CPU"]),
        ("DeepSpeed JSON not valid", ["teacher", cfg("s3", deepspeed_config=str(ds_broken))],
         ["ds_broken.json: not valid JSON"]),
        ("missing DeepSpeed JSON", ["teacher", cfg("s4", deepspeed_config=str(tmp / "no.json"))],
         ["deepspeed_config", "no.json' does not exist"]),
        ("stage before its inputs", ["distill", cfg("p1")], ["no complete teacher; run the teacher stage first"]),
        ("evaluation with nothing to evaluate", ["evaluate", cfg("p2")], ["no complete teacher or student"]),
        ("different tokenizers with token-aligned terms", ["distill", cfg(
            "v1", stages__distill={"teacher_model": _teacher(tmp, tiny_bert)},
            student={"backbone": str(other_vocab), "init": "folder"})],
         ["preset 'cr-ild' needs teacher and student to tokenize alike (mixup, qkv_relation read them",
          "other-vocab' (BertTokenizer, 6 tokens)"]),
        ("relation heads that do not divide", ["distill", cfg("v2", stages__distill={
            "teacher_model": _teacher(tmp, tiny_bert), "preset": "l-ild", "relation_heads": 5})], ["5 relation heads"]),
        ("unknown stage for --only", ["run", cfg("r1"), "--only", "distil"], ["--only distil: unknown stage"]),
        ("unknown non-finite policy", ["config", cfg("n1", stages__teacher__on_nonfinite="ignore")],
         ["stages.teacher.on_nonfinite: expected stop or skip, got 'ignore'"]),
        ("skipping non-finite steps under ZeRO-3", ["teacher", cfg(
            "n2", deepspeed_config=str(REPO / "ds_configs" / "zero3_bf16.json"), stages__teacher__on_nonfinite="skip")],
         ["stages.teacher.on_nonfinite: skip is not supported with ZeRO-3"]),
        ("missing vectors file", ["augment", cfg("a1", stages__augment={"vectors": {"path": str(tmp / "v.txt")}})],
         ["v.txt' does not exist"]),
    ]


def more_cases(tmp: Path, tiny_bert: Path, data: Path):
    """The classes of bad input found after the first catalogue: output names, values out of
    range, files that are not what they claim, models that do not fit, wrong pointers."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    latin1 = _folder(tmp / "latin1", {"train.csv": "sentence,label\ncaf\xe9 film,fresh\n".encode("latin-1"),
                                      "dev.csv": b"sentence,label\ngood,fresh\n"})
    multiline = _folder(tmp / "multiline", {"train.csv": b'sentence,label\n"one\ntwo",fresh\n"three\nfour",meh\n',
                                            "dev.csv": b"sentence,label\ngood,fresh\n"})
    no_dev = _folder(tmp / "no-dev", {"train.jsonl": b'{"sentence": "a good film", "label": "fresh"}\n'})
    (tmp / "a-file").write_text("not a folder")
    ds_optimizer = _text(tmp / "ds_optimizer.json", json.dumps({"optimizer": {"type": "Adamz", "params": {}}}))
    ds_zero = _text(tmp / "ds_zero.json", json.dumps({"zero_optimization": {"stage": 7}}))
    ds_quoted = _text(tmp / "ds_quoted.json", json.dumps({"bf16": {"enabled": "false"}}))
    ds_momentum = _text(tmp / "ds_momentum.json", json.dumps({"optimizer": {"type": "AdamW", "params": {
        "torch_adam": True, "momentum": 0.9}}}))
    ds_typo = _text(tmp / "ds_typo.json", json.dumps({"zero_optimisation": {"stage": 3}}))
    ds_step = _text(tmp / "ds_step.json", json.dumps({"scheduler": {"type": "StepLR"}, "steps_per_print": "10"}))
    ds_bytes = tmp / "ds_bytes.json"
    ds_bytes.write_bytes(b'{"zero_optimization": {"stage": 0}, "x": "\xff"}')
    (tmp / "ds_folder.json").mkdir(exist_ok=True)
    truncated = tmp / "truncated"
    shutil.copytree(tiny_bert, truncated, dirs_exist_ok=True)
    weights = (tiny_bert / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    three_labels = tmp / "three-labels"
    if not three_labels.exists():
        from pipeline.data.tasks import TASKS
        from pipeline.models.loading import build_classifier

        build_classifier(str(tiny_bert), TASKS["snli"], "teacher").save_pretrained(str(three_labels))
        shutil.copy(tiny_bert / "vocab.txt", three_labels / "vocab.txt")
    misfit = tmp / "misfit"  # a three-class head under a config.json edited to two classes
    shutil.copytree(three_labels, misfit, dirs_exist_ok=True)
    config = json.loads((three_labels / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**config, "id2label": {"0": "rotten", "1": "fresh"},
                                                    "label2id": {"rotten": 0, "fresh": 1}}))
    duplicate = _text(tmp / "duplicate.yaml", "seed: 1\nstages:\n  teacher: {epochs: 1}\nseed: 2\n")
    deeper = {"init": "random", "backbone": str(tiny_bert),
              "random_init": {"num_layers": 6, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64}}
    return [
        ("output name that is output_dir itself", ["config", cfg("o1", stages__distill={"output": "."})],
         ["stages.distill.output: expected a plain folder name", "'.'"]),
        ("output name of another stage", ["config", cfg("o2", stages__distill={"output": "teacher"})],
         ["stages.distill.output: 'teacher' is a folder crild uses for something else"]),
        ("output_dir that is a file", ["teacher", cfg("o3", output_dir=str(tmp / "a-file"))],
         ["output_dir: ", "a-file' is a file, not a folder"]),
        ("NaN where a number is expected", ["config", cfg("r1", stages__teacher__learning_rate=float("nan"))],
         ["stages.teacher.learning_rate: expected a positive number, got nan"]),
        ("infinity where a number is expected", ["config", cfg("r2", stages__teacher__max_grad_norm=float("inf"))],
         ["stages.teacher.max_grad_norm: expected a number >= 0, got inf"]),
        ("negative weight decay", ["config", cfg("r3", stages__teacher__weight_decay=-0.1)],
         ["stages.teacher.weight_decay: expected a number >= 0, got -0.1"]),
        ("seed out of range", ["config", cfg("r4", seed=-1)], ["seed: expected a seed in [0, 4294967295], got -1"]),
        ("evaluation batch size 0", ["config", cfg("r5", stages__evaluate={"batch_size": 0})],
         ["stages.evaluate.batch_size: expected a positive integer, got 0"]),
        ("duplicate YAML key", ["config", str(duplicate)], ["duplicate.yaml: duplicate key 'seed' on lines 1 and 4"]),
        ("max_length below the special tokens", ["teacher", cfg("r6", task__max_length=2)],
         ["task.max_length: 2 leaves no room for text", "adds 2 special tokens", "at least 3"]),
        ("data file that is not UTF-8", ["teacher", cfg("f1", task__data_dir=str(latin1))],
         ["latin1/train.csv:2: not UTF-8 text (byte 0xe9"]),
        ("CSV field over several lines", ["teacher", cfg("f2", task__data_dir=str(multiline))],
         ["multiline/train.csv:4: label 'meh'"]),
        ("data folder without a held-out split", ["teacher", cfg("f3", task__data_dir=str(no_dev))],
         ["no-dev: no held-out split for task rotten_tomatoes"]),
        ("few-sample subset larger than the training set", ["teacher", cfg("f5", task__few_sample=1000)],
         ["task.few_sample: 1000 examples asked for, and the training set has 96", "expected at most 96"]),
        ("supplementary data folder missing", ["distill", cfg("f4", stages__distill={
            "teacher_model": _teacher(tmp, tiny_bert), "supplementary": [{"task": {"name": "snli",
                                                                         "data_dir": str(tmp / "no-snli")}}]})],
         ["stages.distill.supplementary[0].task.data_dir: directory", "no-snli' does not exist"]),
        ("DeepSpeed config that is a folder", ["teacher", cfg("s5", deepspeed_config=str(tmp / "ds_folder.json"))],
         ["deepspeed_config: ", "ds_folder.json' is not a file"]),
        ("DeepSpeed config not UTF-8", ["teacher", cfg("s6", deepspeed_config=str(ds_bytes))],
         ["ds_bytes.json:1: not UTF-8 text (byte 0xff at offset 42)"]),
        ("optimizer DeepSpeed does not know", ["teacher", cfg("s7", deepspeed_config=str(ds_optimizer))],
         ["ds_optimizer.json: optimizer.type: DeepSpeed has no optimizer 'Adamz'"]),
        ("ZeRO stage out of range", ["teacher", cfg("s8", deepspeed_config=str(ds_zero))],
         ["ds_zero.json: zero_optimization.stage: DeepSpeed rejects it", "got 7"]),
        ("DeepSpeed switch spelled as a string", ["teacher", cfg("s9", deepspeed_config=str(ds_quoted))],
         ['ds_quoted.json: bf16.enabled: expected true or false, got "false" (a string)']),
        ("optimizer setting the optimizer does not take", ["teacher", cfg("s10", deepspeed_config=str(ds_momentum))],
         ["ds_momentum.json: optimizer.params.momentum: AdamW takes no 'momentum' (it takes lr, betas"]),
        ("misspelled DeepSpeed key", ["teacher", cfg("s12", deepspeed_config=str(ds_typo))],
         ["ds_typo.json: unknown key 'zero_optimisation'; did you mean 'zero_optimization'?"]),
        ("DeepSpeed setting of the wrong type", ["teacher", cfg("s11", deepspeed_config=str(ds_step))],
         ['ds_step.json: steps_per_print: expected a whole number >= 1, got "10" (a string)']),
        ("truncated weights file", ["teacher", cfg("m5", teacher={"model": str(truncated)})],
         ["teacher: cannot load the model in", "truncated'", "incomplete metadata"]),
        ("teacher with another label count", ["teacher", cfg("m6", teacher={"model": str(three_labels)})],
         ["three-labels' is a classifier with 3 outputs (entailment, neutral, contradiction); task rotten_tomatoes "
          "needs 2"]),
        # transformers 5 says only that some tensor does not fit, and logs a table crild hides
        ("weights that do not fit their config.json", ["teacher", cfg("m8", teacher={"model": str(misfit)})],
         ["teacher: the weights in '", "misfit' do not fit its config.json (classifier.bias is [3] where "
          "config.json makes it [2]; classifier.weight is [3, 32] where config.json makes it [2, 32])"]),
        ("evaluating a classifier of another label count", ["evaluate", cfg("m9", stages__evaluate={
            "models": [str(three_labels)]})],
         ["stages.evaluate.models: '", "three-labels' is a classifier with 3 outputs (entailment, neutral, "
          "contradiction); task rotten_tomatoes needs 2"]),
        ("student deeper than its teacher under a uniform map", ["distill", cfg("m7", student=deeper, stages__distill={
            "teacher_model": _teacher(tmp, tiny_bert), "preset": "tinybert"})],
         ["stages.distill.layer_map: uniform maps the student's 6 layers", "the teacher has 4"]),
    ]


def list_cases(tmp: Path, tiny_bert: Path, data: Path):
    """Lists that are empty, repeat an entry or contradict their order, and keys that other
    keys make meaningless: each would have run nothing, run something twice, been ignored
    without a word, or failed after training had started."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    teacher = _teacher(tmp, tiny_bert)
    pairs = lambda p: {"teacher_model": teacher, "layer_map": "pairs", "layer_pairs": p}  # noqa
    snli = [{"task": {"name": "snli"}}]
    glue = _folder(tmp / "glue-sst2", {"train.tsv": b"sentence\tlabel\na fine film\t1\n",
                                       "dev.tsv": b"sentence\tlabel\na dull film\t0\n"})
    return [
        ("empty pipeline", ["run", cfg("l1", pipeline=[])], ["pipeline: expected at least one stage, got an empty list"]),
        ("stage listed twice", ["config", cfg("l2", pipeline=["teacher", "evaluate", "teacher"])],
         ["pipeline: 'teacher' is listed twice; expected each stage once"]),
        ("stages out of order", ["run", cfg("l3", pipeline=["evaluate", "teacher"])],
         ["pipeline: 'teacher' is listed after 'evaluate'; stages run in the order teacher, augment, distill"]),
        ("empty phase list", ["distill", cfg("l4", stages__distill={"teacher_model": teacher, "phases": []})],
         ["stages.distill.phases: expected at least one phase, got an empty list"]),
        ("phases out of order", ["config", cfg("l5", stages__distill={"phases": ["kd", "ild"]})],
         ["stages.distill.phases: 'ild' is listed after 'kd'; phases run in the order ild_supplementary, ild, kd"]),
        ("empty split list", ["evaluate", cfg("l6", stages__evaluate={"splits": []})],
         ["stages.evaluate.splits: expected at least one split, got an empty list"]),
        ("model folder listed twice", ["evaluate", cfg("l7", stages__evaluate={"models": [teacher, teacher]})],
         ["stages.evaluate.models: '", "tiny-teacher' is listed twice; expected each model folder once"]),
        ("layer 0 paired with a Transformer layer", ["distill", cfg("l8", stages__distill=pairs([[0, 1]]))],
         ["stages.distill.layer_pairs: pair [0, 1]: layer 0 is the embedding output, and it pairs only with layer 0"]),
        ("only the embedding pair for a relation term", ["distill", cfg("l9", stages__distill=pairs([[0, 0]]))],
         ["stages.distill.layer_pairs: term 'qkv_relation' reads Transformer layers, and the only pair is the "
          "embeddings' [0, 0]"]),
        ("layer pairs without the pairs map", ["config", cfg("l10", stages__distill={"layer_pairs": [[1, 2]]})],
         ["stages.distill.layer_pairs: used only with layer_map: pairs, and the layer map is 'last'"]),
        # each was accepted and changed nothing: the student had random_init's 2 layers
        ("a setting the key beside it leaves unused", ["config", cfg("l10b", student={
            "init": "random", "backbone": teacher, "num_layers": 6, "random_init": {"num_layers": 2}})],
         ["student.num_layers: 6 is used only with init: truncated, and init is random; set init: truncated or "
          "remove num_layers"]),
        ("a baseline setting that the decider it keeps leaves unused", ["config", cfg("l10d", stages__baseline={
            "max_nonfinite_skips": 4})],
         ["l10d.yaml: stages.baseline.max_nonfinite_skips: 4 is used only with on_nonfinite: skip, and on_nonfinite "
          "is stop (stages.distill.kd's, which the baseline keeps); set on_nonfinite: skip or remove "
          "max_nonfinite_skips"]),
        ("a vocabulary beside vectors that hold their words", ["augment", cfg("l10c", stages__augment={"vectors": {
            "path": str(_text(tmp / "vec.txt", "good 0.1 0.2\n")), "vocab": str(_text(tmp / "w.txt", "good\n"))}})],
         ["stages.augment.vectors.vocab: used only with a .npy matrix, and '", "vec.txt' is a text file whose rows "
          "start with their words; remove vocab"]),
        ("augmented phase that does not run", ["config", cfg("l11", stages__distill={
            "augmented_phases": ["ild_supplementary"]})],
         ["stages.distill.augmented_phases: 'ild_supplementary' is not a phase this stage runs (ild, kd)"]),
        ("augmented data not made yet", ["distill", cfg("l12", stages__distill={
            "teacher_model": teacher, "augmented_phases": ["kd"]})],
         ["l12/run/augmented: no complete augmented data; run the augment stage first"]),
        ("supplementary data no phase reads", ["config", cfg("l13", stages__distill={
            "preset": "kd", "supplementary": snli})],
         ["stages.distill.supplementary: set, and no phase reads it: with supplementary_mode 'before' the "
          "'ild_supplementary' phase does, and the phases are kd; expected none for these phases (leave the key "
          "out, or stages.distill.supplementary=[] on the command line)"]),
        ("supplementary phase without supplementary data", ["config", cfg("l14", stages__distill={
            "phases": ["ild_supplementary", "kd"]})],
         ["stages.distill.phases: phase 'ild_supplementary' trains on stages.distill.supplementary, which is empty"]),
        ("second text column for a single-text task", ["config", cfg("l16", task__columns={"text_b": "other"})],
         ["task.columns.text_b: task rotten_tomatoes classifies single texts and reads no second column"]),
        ("column names for GLUE files", ["teacher", cfg("l17", task__name="sst2", task__data_dir=str(glue),
                                                        task__columns={"text_a": "review"})],
         ["task.columns.text_a: column names apply to CSV, JSONL and TSV files with a header (source files), and "
          "this task reads GLUE's TSV layout in"]),
        ("consistency weight without mixup", ["config", cfg("l18", stages__distill={
            "preset": "l-ild", "consistency": {"weight": 1.0}})],
         ["stages.distill.consistency.weight: 1.0: the term compares the student on mixed and clean inputs, and no "
          "phase of preset 'l-ild' mixes them"]),
        ("mixup without an ILD phase", ["config", cfg("l19", stages__distill={"preset": "kd", "mixup": {
            "enabled": True}})], ["stages.distill.mixup.enabled: mixup mixes the inputs of ILD phases, and the "
                                  "phases are kd"]),
        ("gradient accumulation longer than the stage", ["teacher", cfg(
            "l15", stages__teacher__gradient_accumulation_steps=10**6)],
         ["stages.teacher.gradient_accumulation_steps: 1000000 micro-steps per optimizer step, and 2 epochs of",
          "expected at most"]),
    ]


def backbone_cases(tmp: Path, tiny_bert: Path, data: Path):
    """A backbone (an encoder without a trained classifier) where a trained classifier is
    needed: it would get a random head, and its scores, export or soft labels would mean
    nothing. Intermediate layers alone may come from a backbone (tests/distill)."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    message = f"'{tiny_bert}' is not a classifier trained for task rotten_tomatoes: its weights lack classifier.bias"
    return [
        ("backbone evaluated", ["evaluate", cfg("b1", stages__evaluate={"models": [str(tiny_bert)]})],
         [f"stages.evaluate.models: {message}"]),
        ("backbone exported", ["export", cfg("b2", stages__export={"models": [str(tiny_bert)]})],
         [f"stages.export.models: {message}"]),
        ("logits distilled from a backbone", ["distill", cfg("b3", stages__distill={
            "teacher_model": str(tiny_bert), "preset": "kd"})], [f"stages.distill.teacher_model: {message}"]),
    ]


def reading_cases(tmp: Path, tiny_bert: Path, data: Path):
    """Files that parse but do not say what they seem to: a column named twice (a reader
    would keep one), text that is not text (it would be trained on as Python's repr), a label
    id past the classes, a file where a model folder belongs, vectors that are no matrix, a
    checkpoint folder of the user's."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    dev = b'{"sentence": "good", "label": "fresh"}\n'
    twice = _folder(tmp / "twice", {"train.csv": b"sentence,label,sentence\na,fresh,b\n", "dev.jsonl": dev})
    null = _folder(tmp / "null", {"train.jsonl": b'{"sentence": "a", "label": "fresh"}\n{"sentence": null, '
                                                 b'"label": "rotten"}\n', "dev.jsonl": dev})
    ids = _folder(tmp / "ids", {"train.csv": b"sentence,label\na,1\nb,2\n", "dev.jsonl": dev})
    vectors = _folder(tmp / "vectors", {"glove.npy": b"not a matrix", "words.txt": b"a\nb\n"})
    two = _folder(tmp / "two", {"train.csv": b"sentence,label\na,fresh\n", "train.jsonl": dev, "dev.jsonl": dev})
    return [
        ("column named twice in a header", ["teacher", cfg("g1", task__data_dir=str(twice))],
         ["twice/train.csv:1: column 'sentence' appears twice in the header"]),
        ("two files for one split", ["teacher", cfg("g7", task__data_dir=str(two))],
         ["two: train.jsonl and train.csv are both the train split; crild reads one file per split"]),
        ("null where text is expected", ["teacher", cfg("g2", task__data_dir=str(null))],
         ["null/train.jsonl:2: column 'sentence' is null; expected text"]),
        ("label id past the classes", ["teacher", cfg("g3", task__data_dir=str(ids))],
         ["ids/train.csv:3: label '2' is not one of rotten, fresh, or their ids 0-1"]),
        ("a file where a model folder belongs", ["teacher", cfg("g4", teacher={"model": str(twice / "dev.jsonl")})],
         ["teacher.model: '", "dev.jsonl' is a file; expected a model folder"]),
        ("checkpoint folder crild did not make", ["teacher", foreign_checkpoints(tmp, cfg)],
         ["g6/run/checkpoints/teacher: a folder crild did not make is where this stage keeps its checkpoints"]),
        ("vectors file that is not a matrix", ["augment", cfg("g5", stages__augment={"vectors": {
            "path": str(vectors / "glove.npy"), "vocab": str(vectors / "words.txt")}})],
         ["vectors/glove.npy: not a NumPy .npy matrix of numbers"]),
    ]


def shape_cases(tmp: Path, tiny_bert: Path, data: Path):
    """Text whose shape, not its values, is the mistake: YAML aliases that stand for billions
    of values (a few hundred bytes that would take minutes and gigabytes to copy), an alias
    inside itself, nesting past the limit or past Python's recursion (in a YAML file, an
    override, a DeepSpeed JSON or a JSONL record), a configuration that is a pipe, a
    long value where one number belongs (the message must stay one short line), a path that
    is not UTF-8 (a file name's byte, or YAML's escape of half a UTF-16 pair, which TensorBoard
    failed on mid-stage), and model folders edited by hand."""
    import os

    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    bomb = _text(tmp / "bomb.yaml", "\n".join(lines) + "\n")
    deep = _text(tmp / "deep.yaml", "seed: " + "[" * 20000 + "]" * 20000 + "\n")
    nested = _text(tmp / "nested.yaml", "seed: " + "[" * 99 + "]" * 99 + "\n")
    ds_deep = _text(tmp / "ds_deep.json", '{"zero_optimization": ' + "[" * 100000 + "]" * 100000 + "}")
    records = _folder(tmp / "deep-record", {"train.jsonl": b'{"sentence": ' + b"[" * 100000 + b"]" * 100000
                                            + b', "label": "fresh"}\n', "dev.jsonl": b'{"sentence": "a", "label": "fresh"}\n'})
    def edited(name: str, **values) -> str:
        """A copy of the tiny backbone whose config.json was edited by hand."""
        folder = tmp / name
        shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
        config = json.loads((tiny_bert / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **values}))
        return str(folder)

    broken_tokenizer = edited("bad-tokenizer")
    Path(broken_tokenizer, "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    pipe = tmp / "pipe.yaml"
    if not pipe.exists():
        os.mkfifo(pipe)
    return [
        ("YAML aliases that expand past the limit", ["config", str(bomb)],
         ["bomb.yaml: its aliases (*name) expand to more than 100,000 values"]),
        ("YAML nested past Python's recursion", ["config", str(deep)],
         ["deep.yaml: nested too deeply to read; expected at most 64 levels"]),
        ("YAML nested past the limit", ["config", str(nested)],
         ["nested.yaml: nested more than 64 levels deep; expected at most 64 levels"]),
        ("an override nested past Python's recursion", ["config", cfg("y1"), "seed=" + "[" * 5000 + "]" * 5000],
         ["override 'seed=...': nested too deeply to read"]),
        ("an override whose alias holds itself", ["config", cfg("y2"), "pipeline=&a [*a]"],
         ["override 'pipeline=...': an alias (*name) refers to a list or mapping that holds it"]),
        ("DeepSpeed JSON nested past Python's recursion", ["teacher", cfg("y3", deepspeed_config=str(ds_deep))],
         ["ds_deep.json: nested too deeply to read"]),
        ("JSONL record nested past Python's recursion", ["teacher", cfg("y4", task__data_dir=str(records))],
         ["deep-record/train.jsonl:1: nested too deeply to read"]),
        # YAML 1.1 made a date of it, which no setting takes and JSON cannot copy: a traceback
        ("a date where a seed belongs", ["config", str(_text(tmp / "date.yaml", "seed: 2024-01-01\n"))],
         ["date.yaml: seed: expected an integer, got '2024-01-01' (str)"]),
        ("a YAML tag for a set", ["config", str(_text(tmp / "set.yaml", "seed: 1\npipeline: !!set {teacher}\n"))],
         ["set.yaml: line 2: tag !!set makes a set, which no setting takes; expected text, a number, true/false, "
          "null, a list or a mapping"]),
        ("config file that is a pipe", ["config", str(pipe)],
         ["pipe.yaml: not a regular file (a pipe or a device); expected a config file (YAML)"]),
        ("a long list where a number belongs", ["config", cfg("y5", seed=list(range(1000)))],
         ["seed: expected an integer, got [0, 1, 2, 3, ...] (list)"]),
        ("model config value of the wrong type", ["teacher", cfg("y6", teacher={"model": edited("cfg-type", hidden_size="big")})],
         ["cannot load a model config from '", "cfg-type' (", "Validation error for field 'hidden_size'"]),
        # transformers' advice on this runs past the 300 characters quoted: whole sentences are kept
        ("model config of a model type transformers does not know", ["teacher", cfg("y22", teacher={
            "model": edited("cfg-model-type", model_type="bertt")})],
         ["cfg-model-type' (ValueError: The checkpoint you are trying to load has model type `bertt` but Transformers "
          "does not recognize this architecture.", "your version of Transformers is out of date.)"]),
        ("model config with a negative layer count", ["run", cfg("y7", teacher={"model": edited("cfg-layers", num_hidden_layers=-3)})],
         ["teacher.model: ", "cfg-layers/config.json: num_hidden_layers: expected a positive integer, got -3"]),
        ("model config whose architectures are not a list", ["run", cfg("y8", teacher={"model": edited("cfg-arch", architectures=7)})],
         ["cfg-arch/config.json: architectures: expected a list of class names, got 7"]),
        ("tokenizer.json that is not a tokenizer", ["teacher", cfg("y10", teacher={"model": broken_tokenizer})],
         ["teacher.model: cannot load a tokenizer from '", "bad-tokenizer' ("]),
        ("model config whose hidden size its heads do not divide", ["run", cfg("y9", teacher={"model": edited(
            "cfg-heads", hidden_size=33)})],
         ["teacher: transformers cannot build a model from ", "cfg-heads/config.json (ValueError: The hidden size (33) "
          "is not a multiple of the number of attention heads"]),
        ("a path with a byte that is not UTF-8", ["run", cfg("y11"), "output_dir=" + os.fsdecode(bytes(tmp / "y11") + b"\xff")],
         ["crild: error: override 'output_dir=...': output_dir: expected a file or folder path in UTF-8, got '", "the byte 0xff is not UTF-8"]),
        ("a path with half a UTF-16 pair", ["teacher", cfg("y12", task__data_dir=str(data) + "\ud800")],
         ["y12.yaml: task.data_dir: expected a file or folder path in UTF-8", "'\\ud800' is half of a UTF-16 pair"]),
        # JSON keeps the last of two values of a key without a word; YAML files refuse it
        ("a JSONL record that names a column twice", ["teacher", cfg("y13", task__data_dir=str(_folder(
            tmp / "twice-json", {"train.jsonl": b'{"sentence": "a", "label": "fresh", "sentence": "b"}\n',
                                 "dev.jsonl": b'{"sentence": "a", "label": "fresh"}\n'})))],
         ["twice-json/train.jsonl:1: key 'sentence' appears twice in the record; expected each column once"]),
        ("a DeepSpeed key given twice", ["teacher", cfg("y14", deepspeed_config=str(_text(
            tmp / "ds_twice.json", '{"zero_optimization": {"stage": 0}, "zero_optimization": {"stage": 3}}')))],
         ["ds_twice.json: key 'zero_optimization' appears twice in one object; a key may appear once per section"]),
        ("a Parquet text column of binary data", ["teacher", cfg("y15", task__data_dir=str(_folder(
            tmp / "binary-parquet", {"train.parquet": _parquet(sentence=pa.array([b"good"], pa.binary()),
                                                               label=["fresh"]),
                                     "dev.jsonl": b'{"sentence": "a", "label": "fresh"}\n'})))],
         ["binary-parquet/train.parquet: row 1: column 'sentence' is binary data; expected text"]),
        ("a file named .parquet that is not Parquet", ["teacher", cfg("y16", task__data_dir=str(_folder(
            tmp / "csv-parquet", {"train.parquet": b"sentence,label\ngood,fresh\n",
                                  "dev.jsonl": b'{"sentence": "a", "label": "fresh"}\n'})))],
         ["csv-parquet/train.parquet: not a Parquet file crild can read (Parquet magic bytes not found"]),
        ("a split saved as train.json", ["teacher", cfg("y17", task__data_dir=str(_folder(
            tmp / "json-suffix", {"train.json": b'{"sentence": "a", "label": "fresh"}\n',
                                  "dev.jsonl": b'{"sentence": "a", "label": "fresh"}\n'})))],
         ["json-suffix: no train.jsonl, train.csv, train.tsv or train.parquet for task rotten_tomatoes (found "
          "train.json: crild reads one .jsonl, .csv, .tsv or .parquet file per split, named train, dev (or validation) or test)"]),
        ("a hub dataset whose classes the task names otherwise", ["teacher", cfg("y18", task=_hub_task(
            tmp / "hub-renamed", ["neg", "pos"]))],
         ["hub-renamed:train: column 'label' holds the classes neg, pos, and task.labels lists negative, positive; "
          "expected those names (in any order: crild maps the classes by name)"]),
        ("a hub dataset without the split the task names", ["teacher", cfg("y19", task=_hub_task(
            tmp / "hub-no-split", ["negative", "positive"], hub_splits={"train": "training"}))],
         ["hub-no-split has no split 'training' (has: train, validation); set task.hub_splits.train to the split "
          "crild's train split is"]),
        ("a hub dataset's revision given as a branch", ["config", cfg("y20", task={
            "name": "tone", "labels": ["negative", "positive"], "hub": "someone/tones", "hub_revision": "main"})],
         ["task.hub_revision: expected the full commit hash of a revision of the dataset (40 hex digits, as the hub's "
          "history lists), got 'main': a branch or tag can move"]),
        ("a hub model pinned to a branch", ["teacher", cfg("y21", teacher={"model": "someone/encoder@main"})],
         ["teacher.model: 'someone/encoder@main': expected a full commit hash after '@' (40 lowercase hex digits, as "
          "the hub's history lists), got 'main': a branch or tag can move"]),
    ]


def _hub_task(folder: Path, names: list, **task) -> dict:
    """A task of one's own (labels negative, positive) from a local copy of a hub dataset whose
    label column is a class label of ``names``."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    rows = [{"text": "a fine film", "label": 1}, {"text": "a dull film", "label": 0}]
    write_hub_copy(folder, {"train": rows, "validation": rows}, features)
    return {"name": "reviews", "labels": ["negative", "positive"], "hub": str(folder), "columns": {"text_a": "text"},
            "max_length": 32, **task}


def foreign_checkpoints(tmp: Path, cfg) -> str:
    """A run folder whose checkpoints/teacher holds a file of the user's (the stage must not
    write among it, nor remove it)."""
    config = cfg("g6")
    mine = tmp / "g6" / "run" / "checkpoints" / "teacher"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "notes.txt").write_text("mine")
    return config


def _teacher(tmp: Path, tiny_bert: Path) -> str:
    """A trained sentiment classifier to distil from (its logits are read)."""
    folder = tmp / "tiny-teacher"
    if not folder.exists():
        write_tiny_classifier(tiny_bert, folder)
    return str(folder)


def _folder(path: Path, files: dict) -> Path:
    path.mkdir(exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _parquet(**columns) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def all_cases(tmp: Path, tiny_bert: Path, data: Path):
    return cases(tmp, tiny_bert, data) + more_cases(tmp, tiny_bert, data) + list_cases(tmp, tiny_bert, data) \
        + backbone_cases(tmp, tiny_bert, data) + reading_cases(tmp, tiny_bert, data) \
        + shape_cases(tmp, tiny_bert, data)


def test_catalogue_has_every_case_documented(tmp_path, tiny_bert, sentiment_dir):
    doc = (REPO / "docs" / "bad-inputs.md").read_text()
    names = [name for name, _, _ in all_cases(tmp_path, tiny_bert, sentiment_dir)]
    assert len(names) == CASE_COUNT >= 25 and len(set(names)) == len(names)
    for name in names:
        assert f"| {name} |" in doc, name
    assert f"lists {CASE_COUNT} cases" in " ".join((REPO / "README.md").read_text().split())  # the README's count


def test_every_test_the_catalogue_names_exists():
    """The cases tested beside their code are named by file and test: a renamed or removed
    test would leave the document pointing at nothing."""
    import re

    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)", (REPO / "docs" / "bad-inputs.md").read_text())
    assert len(named) >= 30
    for path, test in named:
        assert f"def {test}(" in (REPO / path).read_text(), (path, test)


CASE_COUNT = 124


@pytest.mark.parametrize("index", range(CASE_COUNT))
def test_bad_input_gives_one_line_and_exit_2(index, tmp_path, tiny_bert, sentiment_dir, capsys):
    name, argv, fragments = all_cases(tmp_path, tiny_bert, sentiment_dir)[index]
    capsys.readouterr()  # what building the cases printed
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crild: error: "), (name, err)
    assert "Traceback" not in err[0]
    for fragment in fragments:
        assert fragment in err[0], (name, fragment, err[0])
    for out in (tmp_path / p for p in ("d1", "m1", "s1", "p1", "v1", "f1", "f3", "m5", "m6", "m7", "m8", "m9", "s7", "l4", "l9",
                                       "l12", "l15", "l17", "b1", "b2", "b3", "f5", "y3", "y4", "y6", "y7", "y8", "y9", "y10",
                                       "y12", "y13", "y14", "y15", "y16", "y17", "y18", "y19", "y21", "y22")):
        for stage in ("teacher", "student", "eval", "augmented", "export"):
            assert not is_complete(out / "run" / stage)
        assert not (out / "run" / "student.phases").exists()  # refused before any phase trained


@pytest.mark.parametrize("command", ["run", "teacher", "status", "submit"])
def test_a_missing_config_argument_names_only_the_config(command, capsys):
    """Overrides are optional: argparse must not ask for them (it does for a bare nargs='*')."""
    with pytest.raises(SystemExit) as exc:
        main([command])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"crild {command}: error: the following arguments are required: config; " \
                                      f"see crild {command} --help\n"
