"""The export stage on tiny models: ONNX folders that ONNX Runtime loads as they are, equal to
PyTorch within the tolerance (recorded), an INT8 student scored beside the fp32 one, the
latency table; bad input (a tolerance that fails, no ONNX Runtime, a folder that does not
export) is one line and leaves nothing that looks complete; the README's serving snippet
runs as written."""
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import FAMILY_TOKENIZERS, REPO, tiny_run_config, write_sentiment_task, write_tiny_classifier

from pipeline import stage1_teacher, stage3_distill
from pipeline.cli import main
from pipeline.config import from_dict, stage_config
from pipeline.errors import count_text
from pipeline.outputs.manifest import is_complete
from pipeline.training.stop import StopRequest

SMALL_BENCH = {"batch1_examples": 8, "batch32_batches": 1, "warmup": 1, "threads": 1}
# the cards' example sentence, and one of more tokens than the tests' tiny models have positions
# (64): the cards' code truncates it where the model can read it (before, an index error)
EXAMPLE = "A gripping, beautifully acted film."
LONG_TEXT = " ".join([EXAMPLE] * 40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, sentiment_dir) -> dict:
    """A run with a teacher and a KD student (raw configuration)."""
    tmp = tmp_path_factory.mktemp("export")
    raw = tiny_run_config(tmp, tiny_bert, sentiment_dir, epochs=1)
    raw["stages"]["distill"] = {"preset": "kd", "kd": {"epochs": 1, "batch_size": 8}}
    raw["stages"]["export"] = {"benchmark": SMALL_BENCH}
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    return raw


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def classify(folder: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return session.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def test_export_matches_pytorch_and_loads_as_it_is(trained, capsys):
    config = write(Path(trained["output_dir"]).parent / "export.yaml", trained)
    code, err = run_cli(["export", str(config)], capsys)
    assert code == 0, err
    out = Path(trained["output_dir"]) / "export"
    assert is_complete(out) and {p.name for p in out.iterdir() if p.is_dir()} == {"teacher", "student",
                                                                                "student-int8"}
    results = json.loads((out / "results.json").read_text())
    rows = {(r["model"], r["runtime"]): r for r in results["models"]}
    assert set(rows) == {("teacher", "pytorch"), ("teacher", "onnx"), ("student", "pytorch"), ("student", "onnx"),
                         ("student", "onnx-int8")}
    for model in ("teacher", "student"):
        fp32 = rows[(model, "onnx")]
        assert fp32["parity"]["max_logit_diff"] <= 1e-4 and fp32["parity"]["agreement"] == 1.0
        assert fp32["parity"]["split"] == "test" and fp32["parity"]["examples"] == 32
        assert fp32["score"] == rows[(model, "pytorch")]["score"]
    int8 = rows[("student", "onnx-int8")]
    assert 0 <= int8["score"] <= 1 and 0 <= int8["parity"]["agreement"] <= 1
    assert all(r["batch1_p50_ms"] > 0 and r["batch1_p95_ms"] >= r["batch1_p50_ms"] and r["batch32_examples_per_s"] > 0
               and r["size_mb"] > 0 for r in rows.values())
    assert results["threads"] == 1
    table = (out / "latency.md").read_text()
    assert "| model | runtime | test accuracy | size (MB) |" in table and "| student | onnx-int8 |" in table
    assert "| teacher | pytorch |" in table and "1.00x" in table
    for name in ("teacher", "student", "student-int8"):  # ONNX Runtime and the tokenizer, nothing else
        logits = classify(out / name, ["a good film .", "an awful movie"])
        assert logits.shape == (2, 2) and np.isfinite(logits).all()
    from transformers import AutoTokenizer

    # truncation=True cuts a text where the scores were computed: at task.max_length (32 here, where the
    # tiny models' tokenizer, MiniLM's, says 512 and the models have 64 positions)
    for folder in (out / "teacher", out / "student-int8", out.parent / "teacher", out.parent / "student"):
        assert AutoTokenizer.from_pretrained(str(folder)).model_max_length == trained["task"]["max_length"] == 32
    made = {"teacher": "Fine-tuned by crild from `tiny-bert` on rotten_tomatoes (96 training examples).",
            "student": "Distilled by crild from a teacher fine-tuned from `tiny-bert` by preset `kd` (phases kd), on "
                       "rotten_tomatoes."}
    for name, (model, runtime) in {"teacher": ("teacher", "onnx"), "student": ("student", "onnx"),
                                   "student-int8": ("student", "onnx-int8")}.items():
        card = check_card(out / name, capsys)
        assert made[model] in card.text and f"# {name}: rotten_tomatoes, single texts" in card.text
        assert ("int8" in card.data.tags) == (runtime == "onnx-int8")
        assert ("knowledge-distillation" in card.data.tags) == (model == "student")
        row = rows[(model, runtime)]
        assert (f"| {row['score']:.4f} | {rows[(model, 'pytorch')]['score']:.4f} | "
                f"{row['parity']['max_logit_diff']:.2g} | {row['parity']['agreement']:.2%} |") in card.text
        assert f"| {row['batch1_p50_ms']:.2f} ms | {row['batch1_p95_ms']:.2f} ms |" in card.text
        assert str(Path(trained["output_dir"]).parent) not in card.text  # local paths by their last name only
        # the graph takes the model's 64 positions; the tokenizer beside it cuts at the 32 it was scored at
        assert "(int64, batch x sequence, at most 64 tokens) |\n| text length | the tokenizer here cuts a text at 32 " \
               "tokens (`truncation=True`), the length crild scored it at |" in card.text, card.text


def check_card(folder: Path, capsys):
    """The model card of an exported folder: a hub card (its YAML header read by huggingface_hub)
    whose serving code runs as written, from the folder, and answers with a label name."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-classification" and {"onnx", "crild"} <= set(card.data.tags)
    start = card.text.index("```python\n") + len("```python\n")
    code = card.text[start:card.text.index("\n```", start)]
    assert 'folder = "."' in code
    capsys.readouterr()
    code = code.replace('folder = "."', f'folder = "{folder}"').replace(EXAMPLE, LONG_TEXT)
    exec(compile(code, str(folder / "README.md"), "exec"), {})
    config = json.loads((folder / "config.json").read_text())
    assert capsys.readouterr().out.strip() in config["id2label"].values()
    return card


@pytest.mark.parametrize("model_type", sorted(FAMILY_TOKENIZERS))
def test_every_family_exports_and_matches_pytorch(tmp_path, family_models, sentiment_dir, capsys, model_type):
    """Each supported family, the INT8 copy included, through the exporter, then served by ONNX
    Runtime and its tokenizer alone (families without token types, DeBERTa's relative
    attention and MPNet's position bias among them)."""
    raw = tiny_run_config(tmp_path, family_models[model_type], sentiment_dir)
    raw["pipeline"] = ["export"]
    classifier = write_tiny_classifier(family_models[model_type], tmp_path / "student")
    raw["stages"]["export"] = {"models": [str(classifier)], "benchmark": {"enabled": False}}
    code, err = run_cli(["export", str(write(tmp_path / "export.yaml", raw))], capsys)
    assert code == 0, err
    out = tmp_path / "run" / "export"
    rows = {r["runtime"]: r for r in json.loads((out / "results.json").read_text())["models"]}
    assert set(rows) == {"pytorch", "onnx", "onnx-int8"}
    assert rows["onnx"]["parity"]["max_logit_diff"] <= 1e-6 and rows["onnx"]["parity"]["agreement"] == 1.0
    assert rows["onnx"]["score"] == rows["pytorch"]["score"]
    assert "IsNaN" not in graph_ops(out / "student")  # traced from eager attention, not SDPA's decomposition
    for name in ("student", "student-int8"):
        logits = classify(out / name, ["a good film .", "an awful movie"])
        assert logits.shape == (2, 2) and np.isfinite(logits).all()
        assert "A model folder crild did not train" in check_card(out / name, capsys).text


def graph_ops(folder: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}


def test_ratios_are_to_the_teacher_by_its_role_not_its_folder_name(trained, tmp_path, capsys):
    """Models from other folders keep their own names (``big_teacher``): the one a crild
    teacher stage wrote is still the teacher, whatever it is called and wherever it is listed,
    so the table reads every ratio against it and it gets no INT8 copy. With no teacher among
    the models the ratios are to the first, and the table names it. (Before, the teacher was
    the model named ``teacher``: here the student was the 1.00x row of a table that said
    "ratios to the teacher", and the teacher got an INT8 copy.)"""
    run = Path(trained["output_dir"])
    teacher = shutil.copytree(run / "teacher", tmp_path / "elsewhere" / "big_teacher")
    exports = {}
    for label, models in {"with": [run / "student", teacher], "without": [run / "student"]}.items():
        raw = json.loads(json.dumps(trained))
        raw["output_dir"] = str(tmp_path / label)
        raw["stages"]["export"]["models"] = [str(m) for m in models]
        code, err = run_cli(["export", str(write(tmp_path / f"{label}.yaml", raw))], capsys)
        assert code == 0, err
        exports[label] = tmp_path / label / "export"
    assert {p.name for p in exports["with"].iterdir() if p.is_dir()} == {"student", "student-int8", "big_teacher"}
    lines = (exports["with"] / "latency.md").read_text().splitlines()
    assert lines[0] == "Deployment on rotten_tomatoes, 1 thread, ratios to the teacher, big_teacher, in PyTorch:"
    assert "| size vs teacher |" in lines[2]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[5].strip() for line in lines[4:]}
    assert rows[("big_teacher", "pytorch")] == "1.00x" and rows[("student", "pytorch")] != "1.00x"
    results = json.loads((exports["with"] / "results.json").read_text())
    assert (results["reference"], results["reference_is_teacher"]) == ("big_teacher", True)
    raw["stages"]["evaluate"] = {"models": [str(run / "student"), str(teacher)], "splits": ["dev"]}
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(write(tmp_path / "evaluate.yaml", raw))])
    assert done.value.code == 0
    evaluated = json.loads((tmp_path / "without" / "eval" / "results.json").read_text())["models"]
    size = evaluated["student"]["parameters"] / evaluated["big_teacher"]["parameters"]
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[-1] for row in table if row[:2] in (["student", "dev"], ["big_teacher", "dev"])] == \
        [f"{size:.2f}x", "1.00x"]  # the evaluation table's size column reads against it too
    results = json.loads((exports["without"] / "results.json").read_text())
    assert (results["reference"], results["reference_is_teacher"]) == ("student", False)
    head = (exports["without"] / "latency.md").read_text().splitlines()
    assert head[0] == ("Deployment on rotten_tomatoes, 1 thread, ratios to student (none of the models is a "
                       "teacher) in PyTorch:") and "| size vs student |" in head[2]


def test_the_teachers_among_models_are_found_by_role(trained, tmp_path):
    """The run's own teacher folder, the folder its distillation reads (given by path or by
    the same name), and a folder a crild teacher stage wrote are teachers; a student or a
    folder crild did not write is not, whatever its name."""
    from pipeline.evaluation.models import teachers

    run = Path(trained["output_dir"])
    named = shutil.copytree(run / "student", tmp_path / "teacher")  # a student in a folder called teacher
    given = write_tiny_classifier(run / "teacher", tmp_path / "hub-like")  # no manifest: crild did not write it
    cfg = from_dict({**json.loads(json.dumps(trained)), "output_dir": str(run)})
    models = {"teacher": str(run / "teacher"), "student": str(run / "student"), "named": str(named),
              "given": str(given), "moved": str(shutil.copytree(run / "teacher", tmp_path / "t2"))}
    assert teachers(cfg, models) == ["teacher", "moved"]
    raw = json.loads(json.dumps(trained))
    raw["stages"]["distill"]["teacher_model"] = str(given)
    assert teachers(from_dict(raw), models) == ["teacher", "given", "moved"]


def test_a_tolerance_that_fails_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    raw["stages"]["export"]["models"] = [str(Path(trained["output_dir"]) / "student")]
    raw["stages"]["export"]["tolerance"] = {"max_logit_diff": 1e-30}
    code, err = run_cli(["export", str(write(tmp_path / "strict.yaml", raw))], capsys)
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(r"crild: error: stages\.export\.tolerance: the ONNX export of student differs from PyTorch "
                        r"on test \(32 examples\): largest logit difference \S+ \(allowed 1e-30\), same prediction "
                        r"on 100\.00% \(required 99\.90%\); nothing was written", err[0]), err[0]
    assert not (tmp_path / "run" / "export").exists() and not list((tmp_path / "run").glob(".export.tmp*"))


def test_a_model_named_as_another_models_int8_copy_is_refused(trained, tmp_path, capsys):
    """export/<name>-int8 is the INT8 copy of <name>: a listed model whose folder has that
    name would share its folder with the copy, one export written over the other."""
    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    clash = shutil.copytree(Path(trained["output_dir"]) / "student", tmp_path / "mine" / "student-int8")
    raw["stages"]["export"]["models"] = [str(Path(trained["output_dir"]) / "student"), str(clash)]
    code, err = run_cli(["export", str(write(tmp_path / "clash.yaml", raw))], capsys)
    assert code == 2 and err == ["crild: error: stages.export.models: the model named 'student-int8' has the folder "
                                 "name of student's INT8 copy (export/student-int8); rename its folder, or set "
                                 "stages.export.quantize: false"], err
    raw["stages"]["export"]["quantize"] = False
    assert run_cli(["export", str(write(tmp_path / "clash.yaml", raw))], capsys)[0] == 0


def test_missing_onnx_runtime_is_one_line(trained, tmp_path, monkeypatch, capsys):
    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    raw["stages"]["export"]["models"] = [str(Path(trained["output_dir"]) / "student")]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    code, err = run_cli(["export", str(write(tmp_path / "no-ort.yaml", raw))], capsys)
    assert code == 2 and err == ["crild: error: stages.export: ONNX Runtime is not installed; pip install "
                                 "onnxruntime onnx (tools/setup.sh does)"]


def test_a_folder_without_a_tokenizer_is_one_line(trained, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(Path(trained["output_dir"]) / "student", bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                 "content_hashes.json"):
        (bare / name).unlink(missing_ok=True)
    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    raw["stages"]["export"]["models"] = [str(bare)]
    code, err = run_cli(["export", str(write(tmp_path / "bare.yaml", raw))], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f"crild: error: stages.export.models: cannot load a tokenizer from '{bare}'"), err
    assert not is_complete(tmp_path / "run" / "export")


def exported(trained, capsys) -> Path:
    """The trained run's export folder, exported here unless an earlier test did."""
    out = Path(trained["output_dir"]) / "export"
    if not is_complete(out):
        assert run_cli(["export", str(write(Path(trained["output_dir"]).parent / "export.yaml", trained))],
                       capsys)[0] == 0
    return out


def test_an_export_folder_given_as_a_model_to_score_is_named_as_one(trained, tmp_path, capsys):
    """An exported folder (model.onnx, no weights) where a model folder belongs, as a user
    scoring their deployed model might give it: one line that says what it is and what to
    give instead, not only that it has no weights."""
    out = exported(trained, capsys) / "student"
    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    raw["stages"]["evaluate"] = {"models": [str(out)]}
    code, err = run_cli(["evaluate", str(write(tmp_path / "onnx.yaml", raw))], capsys)
    assert code == 2 and err == [f"crild: error: stages.evaluate.models: '{out}' is an ONNX export (model.onnx), "
                                 f"which crild does not load as a model; give the model folder it was exported from "
                                 f"(the export stage scores the ONNX models themselves, in export/results.json)"], err


def test_the_readme_serving_snippet_runs_as_written(trained, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Serving the student"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    assert 8 <= len(code.strip().splitlines()) <= 12
    out = exported(trained, capsys) / "student-int8"
    capsys.readouterr()
    exec(compile(code.replace("runs/demo/export/student-int8", str(out)).replace(EXAMPLE, LONG_TEXT), "README.md",
                 "exec"), {})
    assert capsys.readouterr().out.strip() in ("fresh", "rotten")


def test_every_trained_folder_has_a_card_whose_code_runs(trained, capsys):
    """The teacher and student folders, as the training stages write them, carry a card for
    the hub (transformers' header, how crild made them, their dev scores) whose code classifies
    through transformers' pipeline from the folder."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    out = Path(trained["output_dir"])
    results = {name: json.loads((out / name / "train_results.json").read_text()) for name in ("teacher", "student")}
    made = {"teacher": "Fine-tuned by crild from `tiny-bert` on rotten_tomatoes (96 training examples). Saved by crild",
            "student": "Distilled by crild from a teacher fine-tuned from `tiny-bert` by preset `kd` (phases kd), on "
                       "rotten_tomatoes. Saved by crild"}
    last = {"teacher": results["teacher"]["last"], "student": results["student"]["phases"]["kd"]["last"]}
    for name in ("teacher", "student"):
        card = ModelCard.load(out / name / "README.md")
        assert card.data.library_name == "transformers" and card.data.base_model is None  # a local folder
        assert ("knowledge-distillation" in card.data.tags) == (name == "student")
        assert made[name] in card.text and f"# {name}: rotten_tomatoes, single texts" in card.text
        assert f"| accuracy | {last[name]['dev/accuracy']:.4f} |" in card.text
        model = AutoModelForSequenceClassification.from_pretrained(out / name)
        assert f"| parameters | {count_text(model.num_parameters())} |" in card.text  # the tiny model's 30K, not 0.0M
        assert str(out.parent) not in card.text.split("## Use")[0]
        start = card.text.index("```python\n") + len("```python\n")
        code = card.text[start:card.text.index("\n```", start)]
        capsys.readouterr()
        exec(compile(code.replace('model="."', f'model="{out / name}"').replace(EXAMPLE, LONG_TEXT), "README.md",
                     "exec"), {})
        assert re.search(r"'label': '(rotten|fresh)'", capsys.readouterr().out)


def test_a_card_names_a_hub_model_as_its_base_and_a_folder_not_at_all(tmp_path):
    from pipeline.export.model_card import hub_id

    assert hub_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("microsoft/deberta-v3-base@" + "a" * 40) == "microsoft/deberta-v3-base"
    (tmp_path / "teacher").mkdir()
    assert hub_id(str(tmp_path / "teacher")) is None and hub_id("./teacher") is None and hub_id("bert") is None


def test_the_baseline_card_says_it_was_trained_without_a_teacher(trained, tmp_path):
    """The baseline's folder is written as the distill stage's, by a preset without a teacher:
    its card must not say it was distilled."""
    from pipeline.export.provenance import provenance

    cfg = from_dict({**trained, "output_dir": str(tmp_path / "run")})
    assert stage3_distill.run(stage_config(cfg, "baseline"), stop=StopRequest(install_handlers=False)) == 0
    assert provenance(tmp_path / "run" / "student_finetuned") == (
        "Fine-tuned by crild without a teacher on rotten_tomatoes (96 training examples): the no-teacher baseline "
        "that a distilled student of its shape is compared with.")
    card = (tmp_path / "run" / "student_finetuned" / "README.md").read_text()
    assert "# student_finetuned: rotten_tomatoes" in card and "knowledge-distillation" not in card


def test_a_label_with_a_vertical_bar_stays_in_its_cell_of_the_card():
    """A label name is the user's text: a ``|`` in it ended the card's table cell, and the
    hub showed the labels row cut in two."""
    from types import SimpleNamespace

    from transformers import BertConfig

    from pipeline.export.model_card import _model_rows

    spec = SimpleNamespace(regression=False, num_labels=2, labels=["good|great", "bad"])
    row = _model_rows(BertConfig(num_hidden_layers=2, hidden_size=32), 35_104, spec)[-1]
    assert re.split(r"(?<!\\)\|", row) == ["", " labels ", " 0: good\\|great, 1: bad ", ""]


def test_the_readme_serving_snippet_is_the_model_cards(trained):
    """One piece of code serves an export, in the README and in every exported folder's card."""
    from pipeline.export.model_card import serving_code

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Serving the student"):]
    start = section.index("```python\n") + len("```python\n")
    assert section[start:section.index("```", start)] == serving_code("runs/demo/export/student-int8", False, False)


@pytest.mark.parametrize("pair, regression", [(True, False), (True, True), (False, True)])
def test_the_cards_serving_code_for_pairs_and_scores_runs(trained, capsys, pair, regression):
    """A pair task's code gives the tokenizer both texts, a regression's prints its score (run
    here on the exported classifier, which takes pairs and gives logits alike)."""
    from pipeline.export.model_card import serving_code

    out = Path(trained["output_dir"]) / "export" / "student"
    if not out.is_dir():
        assert run_cli(["export", str(write(Path(trained["output_dir"]).parent / "export.yaml", trained))],
                       capsys)[0] == 0
    code = serving_code(str(out), pair, regression)
    assert ("], [" in code) == pair
    capsys.readouterr()
    exec(compile(code, "card", "exec"), {})
    printed = capsys.readouterr().out.strip()
    if regression:
        assert np.isfinite(float(printed))
    else:
        assert printed in ("rotten", "fresh")


def test_export_started_on_several_ranks_is_one_line(trained, tmp_path):
    """Started by hand under the deepspeed launcher, export names how to start it (crild run
    starts it as one process itself: tests/launch/test_command.py)."""
    import subprocess

    from helpers import crild_env

    from pipeline.launch.command import DEEPSPEED_LAUNCHER

    raw = json.loads(json.dumps(trained))
    raw["output_dir"] = str(tmp_path / "run")
    config = write(tmp_path / "ranks.yaml", raw)
    done = subprocess.run([*DEEPSPEED_LAUNCHER, "--num_gpus", "2", str(REPO / "pipeline" / "stage5_export.py"),
                           "--config", str(config)], cwd=REPO, env=crild_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert ("crild: error: stages.export runs in one process, and this is one of 2; start it as one (python "
            "pipeline/stage5_export.py, or srun --ntasks=1), or through crild run, which does") in done.stderr
    assert not (tmp_path / "run" / "export").exists()


def test_more_benchmark_threads_than_cores_is_noted():
    from pipeline.stage5_export import oversubscribed_note

    assert oversubscribed_note(2, 2) is None and oversubscribed_note(1, 16) is None
    assert oversubscribed_note(1000, 2) == (
        "note: stages.export.benchmark.threads is 1000, and this process may use 2 cores: the timings are of an "
        "oversubscribed machine; set it to at most 2, or leave it unset")


def write_outlier_classifier(tiny_bert: Path, folder: Path, tmp: Path) -> Path:
    """A rotten_tomatoes classifier that calls every sentence rotten in fp32 and that dynamic
    quantization turns into one that calls every sentence fresh: its last layer outputs a
    constant 1e5 in one feature that no weight reads, and 5 in another that the head reads.
    Dynamic quantization gives each activation tensor one scale, set by its largest value, and
    at 1e5 / 255 the 5 rounds to zero: activation outliers are how INT8 ruins real encoders."""
    import torch
    from transformers import AutoModelForSequenceClassification

    trained = write_tiny_classifier(tiny_bert, tmp / "outlier-source")
    model = AutoModelForSequenceClassification.from_pretrained(str(trained))
    outlier, read, pooled = 0, 1, 0
    with torch.no_grad():
        norm = model.bert.encoder.layer[-1].output.LayerNorm
        norm.weight[[outlier, read]] = 0.0
        norm.bias[outlier], norm.bias[read] = 1e5, 5.0
        model.bert.pooler.dense.weight.zero_()
        model.bert.pooler.dense.bias.zero_()
        model.bert.pooler.dense.weight[pooled, read] = 1.0  # pooled = tanh(5) in fp32, tanh(0) in INT8
        model.classifier.weight.zero_()
        model.classifier.weight[0, pooled] = 1.0  # rotten: 1.0 in fp32, 0 in INT8
        model.classifier.bias.copy_(torch.tensor([0.0, 0.1]))  # fresh: 0.1
    model.save_pretrained(str(folder))
    for path in trained.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy2(path, folder / path.name)
    return folder


def test_an_int8_copy_that_loses_the_task_is_scored_and_timed_but_not_kept(tmp_path, tiny_bert, capsys):
    """An INT8 copy more than stages.export.int8_max_drop below its fp32 model on the split is
    reported (results.json, the table, a note that says what to serve instead) and not left
    where a deployment would pick it up; the fp32 export is kept with its card."""
    data = write_sentiment_task(tmp_path / "data")
    with open(data / "test.jsonl", "w") as fh:  # every test sentence rotten: the fp32 model is right on all
        for i in range(16):
            fh.write(json.dumps({"sentence": f"a dull film number {i} .", "label": "rotten"}) + "\n")
    model = write_outlier_classifier(tiny_bert, tmp_path / "outlier", tmp_path)
    raw = tiny_run_config(tmp_path, tiny_bert, data)
    raw["pipeline"] = ["export"]
    raw["stages"]["export"] = {"models": [str(model)], "benchmark": SMALL_BENCH}
    code, err = run_cli(["export", str(write(tmp_path / "export.yaml", raw))], capsys)
    assert code == 0, err
    out = tmp_path / "run" / "export"
    rows = {r["runtime"]: r for r in json.loads((out / "results.json").read_text())["models"]}
    assert rows["pytorch"]["score"] == rows["onnx"]["score"] == 1.0
    assert rows["onnx-int8"]["score"] == 0.0 and rows["onnx-int8"]["kept"] is False
    assert "batch1_p50_ms" in rows["onnx-int8"]  # timed all the same: the table shows what was given up
    assert not (out / "outlier-int8").exists() and (out / "outlier" / "README.md").is_file()
    assert "| outlier | onnx-int8 (not kept) | 0.0000 |" in (out / "latency.md").read_text()
    assert ("crild: note: export: outlier-int8 was not kept: its accuracy on test is 0.0000, 1.0000 below the fp32 "
            "model's 1.0000 (stages.export.int8_max_drop is 0.01); serve outlier, or set int8_max_drop higher "
            "(null: always keep) to keep it") in err

    raw["output_dir"] = str(tmp_path / "kept")  # null: the copy is kept whatever it scores
    raw["stages"]["export"]["int8_max_drop"] = None
    code, err = run_cli(["export", str(write(tmp_path / "keep.yaml", raw))], capsys)
    assert code == 0, err
    row = next(r for r in json.loads((tmp_path / "kept/export/results.json").read_text())["models"]
               if r["runtime"] == "onnx-int8")
    assert row["kept"] is True and row["score"] == 0.0 and (tmp_path / "kept/export/outlier-int8/model.onnx").is_file()

    raw["output_dir"] = str(tmp_path / "on-dev")  # the table names the split its scores are from
    raw["stages"]["export"]["split"] = "dev"
    code, err = run_cli(["export", str(write(tmp_path / "dev.yaml", raw))], capsys)
    assert code == 0, err
    assert "| model | runtime | dev accuracy |" in (tmp_path / "on-dev/export/latency.md").read_text()


def test_weights_in_files_of_their_own_are_gathered_into_one_and_quantized_from_there(tmp_path, tiny_bert):
    """Over protobuf's 2 GiB the exporter writes each weight in a file of its own beside
    model.onnx (hundreds for a 2.2 GB BERT, where this was checked once through the stage; its
    INT8 copy then failed with a traceback). The export gathers them into model.onnx.data, and
    quantization reads and writes that layout. The tiny model is saved the exporter's way
    here: the same layout at a size the suite can afford."""
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification

    from pipeline.export.onnx_export import ONNX_FILE, export_classifier, external_data_files, gather_external_data
    from pipeline.export.quantize import quantize_folder
    from pipeline.models.loading import load_tokenizer

    source = write_tiny_classifier(tiny_bert, tmp_path / "classifier")
    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
    export_classifier(model, load_tokenizer(str(source), "x"), source, tmp_path / "plain", 17)
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "plain", split)
    onnx.save_model(onnx.load(str(split / ONNX_FILE)), str(split / ONNX_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(external_data_files(split / ONNX_FILE)) > 20

    gather_external_data(split / ONNX_FILE)
    assert external_data_files(split / ONNX_FILE) == {"model.onnx.data"}
    assert {p.name for p in split.iterdir()} == {p.name for p in (tmp_path / "plain").iterdir()} | {"model.onnx.data"}
    texts = ["a good film .", "an awful movie that never ends"]
    torch.testing.assert_close(torch.from_numpy(classify(split, texts)), torch.from_numpy(classify(tmp_path / "plain", texts)))

    quantize_folder(split, tmp_path / "int8")
    quantize_folder(tmp_path / "plain", tmp_path / "int8-plain")
    assert not list((tmp_path / "int8").glob("prepared*"))
    assert external_data_files(tmp_path / "int8" / ONNX_FILE)  # the copy of a large graph keeps its weights beside it
    ort.InferenceSession(str(tmp_path / "int8" / ONNX_FILE), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(classify(tmp_path / "int8", texts), classify(tmp_path / "int8-plain", texts))


def test_a_sharded_checkpoint_is_sized_by_all_its_shards(tmp_path, tiny_bert, sentiment_dir, capsys):
    """A model saved in shards (a large or older hub checkpoint) is sized by every shard in the
    table and results.json; it counted as 0 MB, and as the table's first row it divided the
    others' sizes by zero."""
    from transformers import AutoModelForSequenceClassification

    whole = write_tiny_classifier(tiny_bert, tmp_path / "whole")
    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(str(whole)).save_pretrained(str(sharded), max_shard_size="20KB")
    for path in whole.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy2(path, sharded / path.name)
    shards = list(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["export"]
    raw["stages"]["export"] = {"models": [str(sharded)], "benchmark": SMALL_BENCH}
    code, err = run_cli(["export", str(write(tmp_path / "export.yaml", raw))], capsys)
    assert code == 0, err
    row = next(r for r in json.loads((tmp_path / "run/export/results.json").read_text())["models"]
               if r["runtime"] == "pytorch")
    files = shards + [sharded / "model.safetensors.index.json"]
    assert row["size_mb"] == pytest.approx(sum(p.stat().st_size for p in files) / 2**20, rel=1e-9)
    assert row["size_mb"] == pytest.approx((whole / "model.safetensors").stat().st_size / 2**20, rel=0.05)


def test_a_regression_export_is_judged_by_its_scores_difference_alone(tmp_path, tiny_bert, capsys):
    """A regression's one output has no class to agree on: its agreement was an argmax over one
    column, "same prediction on 100.00%" whatever the scores, in the log line, results.json and
    the card. Its parity is the largest difference now, and a difference over the tolerance is
    the one line, without an agreement it never had."""
    data = tmp_path / "scores"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"sentence": f"a film number {i} .", "score": i / 4}) + "\n" for i in range(12)))
    model = write_tiny_classifier(tiny_bert, tmp_path / "scorer", task="stsb")  # one output, a score
    raw = tiny_run_config(tmp_path, tiny_bert, data)
    raw["task"] = {"name": "scores", "regression": True, "data_dir": str(data), "max_length": 32,
                   "columns": {"text_a": "sentence", "label": "score"}}
    raw["pipeline"] = ["export"]
    raw["stages"]["export"] = {"models": [str(model)], "quantize": False, "benchmark": {"enabled": False}}
    code, err = run_cli(["export", str(write(tmp_path / "export.yaml", raw))], capsys)
    assert code == 0, err
    out = tmp_path / "run" / "export"
    (line,) = [e for e in err if "ONNX matches PyTorch" in e]
    assert re.fullmatch(r"crild: export: scorer: ONNX matches PyTorch on test \(largest logit difference \S+\)", line)
    (row,) = [r for r in json.loads((out / "results.json").read_text())["models"] if r["runtime"] == "onnx"]
    assert row["parity"]["agreement"] is None and row["parity"]["max_logit_diff"] <= 1e-4
    card = (out / "scorer" / "README.md").read_text()
    assert "| pearson in ONNX Runtime | pearson in PyTorch (fp32) | largest logit difference |\n|---|---|---|\n" in card
    assert "same prediction" not in card

    raw["output_dir"] = str(tmp_path / "strict")
    raw["stages"]["export"]["tolerance"] = {"max_logit_diff": 1e-30}
    code, err = run_cli(["export", str(write(tmp_path / "strict.yaml", raw))], capsys)
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(r"crild: error: stages\.export\.tolerance: the ONNX export of scorer differs from PyTorch on "
                        r"test \(12 examples\): largest logit difference \S+ \(allowed 1e-30\); nothing was written",
                        err[0]), err[0]
