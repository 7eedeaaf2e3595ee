"""The comparison study and its report on tiny models: runs through `crild run`, a resumable
partial report, the table, the plots, the TensorBoard read-back and the flatness probe."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO, tiny_run_config

from pipeline.evaluation.flatness import perturbed_scores
from pipeline.study.scoring import read_scalars


def test_flatness_probe_restores_weights_and_scores_clean_once():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8)
    target = model(x).argmax(-1)

    def score():
        return float((model(x).argmax(-1) == target).float().mean())

    curve = perturbed_scores(model, score, [0.0, 0.01, 3.0], draws=4, seed=1)
    assert curve[0.0] == [1.0]  # unperturbed: scored once, agrees with itself
    assert len(curve[0.01]) == 4 and min(curve[0.01]) > 0.9  # tiny noise barely moves it
    assert sum(curve[3.0]) / 4 < 0.9  # noise 3x the weights' scale scrambles it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert perturbed_scores(model, score, [0.0, 3.0], draws=4, seed=1)[3.0] == curve[3.0]  # seeded


def test_read_scalars_keeps_the_later_write_of_a_repeated_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for values in ([(1, 1.0), (2, 2.0)], [(2, 5.0), (3, 3.0)]):  # a resumed run rewrites step 2
        w = SummaryWriter(str(tmp_path))
        for step, v in values:
            w.add_scalar("kd/train/loss", v, step)
        w.close()
    assert read_scalars(tmp_path)["kd/train/loss"] == [(1, 1.0), (2, 5.0), (3, 3.0)]


def test_a_report_written_again_with_nothing_new_keeps_its_date(tmp_path):
    from pipeline.study.report import dated_as_before

    readme = tmp_path / "README.md"
    header = "# Title\n\nWritten by `crild study s.yaml` on {}; x86_64, 2 cores.\n\n| kd | 2 | {} |\n"
    assert dated_as_before(readme, header.format("2026-12-02", "80.1")) == header.format("2026-12-02", "80.1")  # none yet
    readme.write_text(header.format("2026-11-29", "80.1"))
    assert dated_as_before(readme, header.format("2026-12-02", "80.1")) == header.format("2026-11-29", "80.1")
    assert dated_as_before(readme, header.format("2026-12-02", "80.2")) == header.format("2026-12-02", "80.2")


def study_here(capsys, study, *options) -> tuple[int, str, str]:
    """``crild study --study STUDY OPTIONS`` (what tools/report.py runs) in this process: its
    exit code, stdout and stderr. The cells it scores or runs are still processes of their own;
    only the report's own start-up (torch, transformers) is saved."""
    import signal

    from pipeline.cli import main

    capsys.readouterr()
    handler = signal.getsignal(signal.SIGTERM)  # crild study sets its own; the worker keeps pytest's
    try:
        with pytest.raises(SystemExit) as done:
            main(["study", "--study", str(study), *options])
    finally:
        signal.signal(signal.SIGTERM, handler)
    out, err = capsys.readouterr()
    return done.value.code or 0, out, err


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tmp_path, tiny_bert, sentiment_dir, capsys):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=6, learning_rate=3e-3)
    raw["pipeline"] = ["teacher", "distill"]
    train = {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "checkpoint_every": 50, "log_every": 2}
    raw["stages"]["distill"] = {"temperature": 1.0, "ild": train,
                                "kd": {**train, "eval_every": 4, "eval_train_examples": 32}}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "base": str(base), "output_dir": str(tmp_path / "cells"), "report_dir": str(tmp_path / "report"),
        "seeds": [1, 2], "methods": ["kd", "cr-ild"], "tasks": {"rotten_tomatoes": {}},
        "settings": {"few-64": {"task.few_sample": 64}},
        "flatness": {"scales": [0.0, 0.5], "draws": 2, "examples": 16}, "eval_splits": ["dev", "test"],
        "score_max_examples": {"rotten_tomatoes": 20}}))
    cmd = [sys.executable, str(REPO / "tools" / "report.py"), "--study", str(study)]

    proc = subprocess.run(cmd + ["--max-runs", "3", "--jobs", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    events = [line for line in proc.stdout.splitlines() if line.startswith("report: ")]
    # two seeds at once, but never two cells of one seed (they share its teacher and checkpoints)
    assert events[:2] == ["report: running rotten_tomatoes/few-64/seed1/kd",
                          "report: running rotten_tomatoes/few-64/seed2/kd"], events
    started_cr_ild = events.index("report: running rotten_tomatoes/few-64/seed1/cr-ild")
    assert any(e.startswith("report: rotten_tomatoes/few-64/seed1/kd done") for e in events[:started_cr_ild])
    text = (tmp_path / "report" / "README.md").read_text()
    assert "**3 of 4 runs complete.** This report is partial." in text
    assert "- rotten_tomatoes/few-64/seed2/cr-ild" in text  # what is missing is named

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # continues: one cell left
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("report: running") == 1
    text = (tmp_path / "report" / "README.md").read_text()
    assert "**4 of 4 runs complete.**" in text
    row = next(line for line in text.splitlines() if line.startswith("| cr-ild |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and all("±" in c for c in cells[2:])  # every column filled, 2 seeds
    teacher = next(line for line in text.splitlines() if line.startswith("| teacher | 2 |"))
    assert float(teacher.split("|")[5].split("±")[0]) > 60  # test accuracy above chance (50): the teachers learned
    for kind in ("gap", "flatness", "losses"):
        assert (tmp_path / "report" / f"{kind}_rotten_tomatoes_few-64.png").stat().st_size > 1000
        assert f'src="{kind}_rotten_tomatoes_few-64.png"' in (tmp_path / "report" / "index.html").read_text()
    assert "Checks of the paper's findings:" in text and "CR-ILD beats prediction-layer KD alone" in text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["rotten_tomatoes/few-64"]
    assert summary["cr-ild"]["seeds"] == [1, 2] and len(summary["kd"]["test_last"]) == 2
    assert all(g is not None for g in summary["cr-ild"]["gap_end"])
    records = tmp_path / "report" / "records" / "rotten_tomatoes" / "few-64"
    scored = json.loads((records / "seed1" / "cr-ild.json").read_text())
    assert scored["examples"] == {"dev": 20, "test": 20} and scored["cell"] == "rotten_tomatoes/few-64/seed1/cr-ild"
    assert scored["gap_curve"] and any(tag.startswith("ild/train/") for tag in scored["losses"])
    assert "kd/train/logit_kd" in scored["losses"] and "kd/eval/train/accuracy" not in scored["losses"]
    teachers = [json.loads((records / f"seed{s}" / "teacher.json").read_text()) for s in (1, 2)]
    mean = sum(t["scores"]["test"]["accuracy"] for t in teachers) / 2  # the table's teacher row comes from them
    assert f"{mean * 100:.2f} ±" in teacher and all(len(t["weights_sha256"]) == 64 for t in teachers)
    assert "Held-out rotten_tomatoes scores use the first 20 examples of each split" in text
    assert any(line.startswith("| one class ('") for line in text.splitlines())  # the constant prediction, for reference
    first = (tmp_path / "report" / "README.md").read_text()
    # what each model predicts, beside the best one-class prediction: in the records, and
    # for a whole group (teachers too) from tools/predicted_classes.py, on the same weights
    assert sum(scored["predicted"]["test"].values()) == 20 and scored["one_class"]["test"]["accuracy"] >= 0.5
    tool = [sys.executable, str(REPO / "tools" / "predicted_classes.py"), "--study", str(study), "--group"]
    proc = subprocess.run(tool + ["rotten_tomatoes/few-64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    made = json.loads((tmp_path / "report" / "predicted_classes_rotten_tomatoes_few-64.json").read_text())
    assert sorted((m["model"], m["seed"]) for m in made["models"]) == [
        (name, seed) for name in ("cr-ild", "kd", "teacher") for seed in (1, 2)]
    for m in made["models"]:
        kept = json.loads((records / f"seed{m['seed']}" / f"{m['model']}.json").read_text())
        assert (m["predicted"], m["weights_sha256"]) == (kept["predicted"], kept["weights_sha256"])
    assert made["one_class"] == scored["one_class"]
    proc = subprocess.run(tool + ["rotten_tomatoes/few-65"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "few-65" in proc.stderr
    # records made before they carried the counts take them from that file, for the same weights only
    made_path = tmp_path / "report" / "predicted_classes_rotten_tomatoes_few-64.json"
    kept_records = {p: p.read_text() for p in records.glob("seed*/*.json")}
    for path, text_before in kept_records.items():
        old = json.loads(text_before)
        del old["predicted"], old["one_class"]
        path.write_text(json.dumps(old))
    # (the commands from here on run in this process: see study_here)
    assert study_here(capsys, study, "--collect-only")[0] == 0
    assert (tmp_path / "report" / "README.md").read_text() == first
    other = {**made, "models": [{**m, "weights_sha256": "0" * 64} for m in made["models"]]}
    made_path.write_text(json.dumps(other))
    assert study_here(capsys, study, "--collect-only")[0] == 0
    assert "| one class (" not in (tmp_path / "report" / "README.md").read_text()
    made_path.write_text("{")
    code, _, err = study_here(capsys, study, "--collect-only")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"crild: error: {made_path}: not a "
                                                                "predicted-classes file"), err
    for path, text_before in kept_records.items():
        path.write_text(text_before)
    made_path.unlink()

    # a record made with other settings is stale: its complete run here is listed as not scored
    # (--cached-scores), then scored again (--collect-only), not run again
    stale = json.loads((records / "seed2" / "kd.json").read_text())
    (records / "seed2" / "kd.json").write_text(json.dumps({**stale, "key": "0" * 16}))
    code, _, err = study_here(capsys, study, "--collect-only", "--cached-scores")
    text = (tmp_path / "report" / "README.md").read_text()
    assert code == 0 and "**3 of 4 runs complete.**" in text, err[-2000:]
    assert "1 complete runs are not scored yet" in text and "- rotten_tomatoes/few-64/seed2/kd" in text
    assert json.loads((records / "seed2" / "kd.json").read_text())["key"] == "0" * 16  # left as it was
    code, out, _ = study_here(capsys, study, "--collect-only")
    assert code == 0, out[-2000:]
    assert [line for line in out.splitlines() if line.startswith(("report: scoring", "report: running"))] == [
        "report: scoring rotten_tomatoes/few-64/seed2/kd"]
    assert json.loads((records / "seed2" / "kd.json").read_text())["key"] == stale["key"]
    assert "**4 of 4 runs complete.**" in (tmp_path / "report" / "README.md").read_text()

    # the records are the study's results: with every run folder gone (a fresh clone, another
    # machine) the report is the same and nothing is run again
    shutil.rmtree(tmp_path / "cells")
    code, out, err = study_here(capsys, study)
    assert code == 0 and "report: running" not in out, out[-2000:] + err[-2000:]
    again = (tmp_path / "report" / "README.md").read_text()
    assert again.split("\n", 3)[3] == first.split("\n", 3)[3]  # all but the date line
    # where a record is stale and its run folder gone, the cell is missing (the next run runs it)
    (records / "seed2" / "kd.json").write_text(json.dumps({**stale, "key": "0" * 16}))
    code, out, _ = study_here(capsys, study, "--collect-only")
    assert code == 0 and "report: scoring" not in out, out[-2000:]
    assert "- rotten_tomatoes/few-64/seed2/kd" in (tmp_path / "report" / "README.md").read_text()


def test_a_record_holds_while_its_cell_settings_and_weights_are_unchanged(tmp_path):
    """Records are keyed by the cell's settings (not where its run folder is) and by the
    weights of a complete run here."""
    from pipeline.outputs.manifest import MANIFEST
    from pipeline.study.cells import cells
    from pipeline.study.records import load_record, record_key, write_record
    from pipeline.study.spec import load_study

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"pipeline": ["teacher", "distill"], "task": {"name": "rotten_tomatoes"},
                                    "teacher": {"random_init": {"num_layers": 2, "hidden_size": 32, "num_heads": 2,
                                                                "intermediate_size": 64}}}))

    def study(**over):
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({
            "base": str(base), "output_dir": str(tmp_path / "cells"), "report_dir": str(tmp_path / "report"),
            "seeds": [1], "methods": ["kd", "cr-ild"], "tasks": {"rotten_tomatoes": {}},
            "settings": {"few": {"task.few_sample": 64}}, **over}))
        spec = load_study(str(path))
        return spec, cells(spec)

    spec, (kd, cr) = study()
    write_record(spec, kd, {"scores": {"test": {"accuracy": 0.5}}})
    write_record(spec, kd, {"scores": {"test": {"accuracy": 0.7}}}, teacher=True)
    assert load_record(spec, kd)["scores"]["test"]["accuracy"] == 0.5 and load_record(spec, cr) is None
    assert record_key(spec, kd, teacher=True) == record_key(spec, cr, teacher=True)  # one teacher per seed
    assert record_key(spec, kd) != record_key(spec, cr)

    spec, (kd, _) = study(output_dir=str(tmp_path / "elsewhere"))  # another machine's run folders
    assert load_record(spec, kd) is not None
    spec, (kd, _) = study(settings={"few": {"task.few_sample": 128}})  # other training data
    assert load_record(spec, kd) is None and load_record(spec, kd, teacher=True) is None
    spec, (kd, _) = study(flatness={"draws": 5})  # other scoring: the student's record, not the teacher's
    assert load_record(spec, kd) is None and load_record(spec, kd, teacher=True) is not None
    # a per-phase DeepSpeed config: its text counts, as the top-level one's does, not only its path
    phase_ds = tmp_path / "kd_ds.json"
    phase_ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    spec, (kd, _) = study(settings={"few": {"task.few_sample": 64, "stages.distill.kd.deepspeed_config": str(phase_ds)}})
    write_record(spec, kd, {"scores": {"test": {"accuracy": 0.6}}})
    assert load_record(spec, kd)["scores"]["test"]["accuracy"] == 0.6
    phase_ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}}))
    assert load_record(spec, kd) is None

    spec, (kd, _) = study()
    write_record(spec, kd, {"scores": {"test": {"accuracy": 0.5}}})
    assert load_record(spec, kd) is not None
    kd.student.mkdir(parents=True)  # the run here was redone: its weights differ from the record's
    (kd.student / MANIFEST).write_text(json.dumps({"status": "complete"}))
    (kd.student / "content_hashes.json").write_text(json.dumps({"model.safetensors": {"sha256": "beef"}}))
    assert load_record(spec, kd) is None
    (tmp_path / "report" / "records" / "rotten_tomatoes" / "few" / "seed1" / "kd.json").write_text("{not json")
    assert load_record(spec, kd) is None


def test_study_file_errors_name_the_key(tmp_path):
    from pipeline.errors import UserError
    from pipeline.study.spec import load_study

    base = {"base": "b.yaml", "output_dir": "o", "report_dir": "r", "seeds": [1], "methods": ["kd"],
            "tasks": {"rotten_tomatoes": {}}, "settings": {"s": {}}}
    for extra, expected in [({"score_max_examples": {"snli": 10}}, "'snli' is not one of the study's tasks"),
                            ({"score_max_examples": {"rotten_tomatoes": 0}}, "rotten_tomatoes: expected a positive"),
                            ({"methods": ["kd", "cr-ild-v2"]}, "methods[1]: unknown method 'cr-ild-v2'; did you "
                                                                "mean 'cr-ild'? (a preset, or one of variants: none"),
                            ({"variants": {"kd": {"preset": "kd"}}}, "'kd' is a preset; a variant needs a name"),
                            ({"variants": {"teacher": {"preset": "kd"}}}, "'teacher' names each seed's teacher "
                                                                           "record; a variant needs a name"),
                            ({"variants": {"a/b": {"preset": "kd"}}}, "expected a plain name"),
                            # a setting names the cells' folders: one with a path in it ran cells
                            # outside output_dir and wrote records outside report_dir
                            ({"settings": {"../../x": {}}}, "settings: expected a plain name (letters, digits"),
                            ({"settings": {"few/1000": {}}}, "got 'few/1000': it names a folder of the study's"),
                            ({"settings": {".": {}}}, "settings: expected a plain name"),
                            ({"variants": {"v": {"preset": "kdd"}}}, "variants.v.preset: unknown preset 'kdd'"),
                            ({"variants": {"v": {"preset": "kd", "settings": ["t"]}}},
                             "variants.v.settings: unknown setting 't'"),
                            ({"variants": {"v": {"preset": "kd", "tasks": {"snli": {}}}}},
                             "variants.v.tasks: 'snli' is not one of the study's tasks"),
                            ({"seeds": [1, "2"]}, "seeds: expected a list of integers"),
                            # a repeated seed or method would be counted twice in every mean and spread
                            ({"seeds": [1, 2, 1]}, "seeds: 1 is listed twice; expected each seed once"),
                            ({"methods": ["kd", "kd"]}, "methods: 'kd' is listed twice; expected each method once"),
                            ({"methods": []}, "methods: expected at least one method, got an empty list"),
                            ({"tasks": {}}, "tasks: expected at least one task, got none"),
                            ({"settings": {}}, "settings: expected at least one setting, got none"),
                            ({"eval_splits": ["dev", "dev"]}, "eval_splits: 'dev' is listed twice"),
                            ({"flatness": {"scales": []}}, "flatness.scales: expected at least one scale"),
                            # the probe reads a split the scoring loaded: another was a KeyError after training
                            ({"flatness": {"split": "validation"}}, "flatness.split: 'validation' is not one of "
                                                                    "eval_splits (dev, test); expected one of them"),
                            ({"eval_splits": ["test"]}, "flatness.split: 'dev' is not one of eval_splits (test)"),
                            ({"variants": {"v": {"preset": "kd", "settings": []}}},
                             "variants.v.settings: expected at least one setting, got an empty list"),
                            # what the study sets per cell: an override would make cells share a run
                            # folder, or run another seed, task or method than their label says
                            ({"settings": {"s": {"seed": 3}}}, "settings.s: 'seed' is set for each cell from the "
                                                               "study's seeds; a study's overrides cannot change it"),
                            ({"settings": {"s": {"output_dir": "x"}}}, "settings.s: 'output_dir' is set for each cell"),
                            ({"tasks": {"rotten_tomatoes": {"task": {"name": "snli"}}}},
                             "tasks.rotten_tomatoes: 'task.name' is set for each cell from the study's tasks"),
                            ({"variants": {"v": {"preset": "kd", "overrides": {"stages.distill.preset": "pkd"}}}},
                             "variants.v.overrides: 'stages.distill.preset' is set for each cell from the study's "
                             "methods"),
                            ({"variants": {"v": {"preset": "kd", "tasks": {"rotten_tomatoes": {
                                "stages": {"distill": {"output": "x"}}}}}}},
                             "variants.v.tasks.rotten_tomatoes: 'stages.distill.output' is set for each cell")]:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        with pytest.raises(UserError) as err:
            load_study(str(path))
        assert str(path) in str(err.value) and expected in str(err.value)
    # a base that trains no student: its teachers would run, then every cell fail at scoring
    (tmp_path / "teachers.yaml").write_text(yaml.safe_dump({"pipeline": ["teacher", "evaluate"]}))
    path.write_text(yaml.safe_dump({**base, "base": str(tmp_path / "teachers.yaml")}))
    with pytest.raises(UserError) as err:
        load_study(str(path))
    assert str(err.value) == (f"{path}: base: the pipeline of '{tmp_path / 'teachers.yaml'}' is [teacher, "
                              f"evaluate]; every cell trains a student, so expected 'distill' in it")


def test_a_report_dir_of_other_files_or_an_output_dir_at_the_root_is_refused_before_anything_runs(tmp_path):
    """``report_dir: .`` would have replaced the project's README.md with the report."""
    import json

    from pipeline.errors import UserError
    from pipeline.study.spec import load_study

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"pipeline": ["teacher", "distill"]}))
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("my project")
    path = tmp_path / "study.yaml"

    def study(report_dir, output_dir="o"):
        path.write_text(yaml.safe_dump({"base": str(tmp_path / "base.yaml"), "output_dir": output_dir, "report_dir":
                                        str(report_dir), "seeds": [1], "methods": ["kd"],
                                        "tasks": {"rotten_tomatoes": {}}, "settings": {"s": {}}}))
        return load_study(str(path))

    # cells go to <output_dir>/<task>/...: at the root they made folders among the system's
    with pytest.raises(UserError, match="output_dir: '/' is the file system's root; the study makes a folder per "
                                        "task there"):
        study(tmp_path / "report", output_dir="/")

    with pytest.raises(UserError) as err:
        study(mine)
    assert str(err.value) == (f"{path}: report_dir: '{mine}' holds files crild did not write (README.md); the "
                              f"report writes README.md, index.html, summary.json and plots there, replacing any "
                              f"of those names: expected a new or empty folder, or one holding a crild report")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="report_dir: '.*a-file' is a file, not a folder"):
        study(tmp_path / "a-file")
    # under a file, either folder: refused with the file named, where the first mkdir's traceback ended
    # the report (--collect-only too) or the first cell
    with pytest.raises(UserError, match=rf"report_dir: '.*a-file/report' is under '{tmp_path}/a-file', a file$"):
        study(tmp_path / "a-file" / "report")
    with pytest.raises(UserError, match=r"output_dir: '.*a-file' is a file, not a folder$"):
        study(tmp_path / "report", output_dir=str(tmp_path / "a-file"))
    with pytest.raises(UserError, match=rf"output_dir: '.*a-file/cells' is under '{tmp_path}/a-file', a file$"):
        study(tmp_path / "report", output_dir=str(tmp_path / "a-file" / "cells"))
    ours = tmp_path / "report"
    study(ours)  # new
    (ours / "records").mkdir(parents=True)
    study(ours)  # records of the cells run so far
    (ours / "README.md").write_text("# report")
    (ours / "summary.json").write_text(json.dumps({"findings": []}))
    study(ours)  # a report crild wrote
    study(REPO / "reports" / "offline")  # the committed one


def write_study(tmp_path, raw: dict, **fields):
    """A study file over base configuration ``raw`` (teacher, then distillation) on Rotten
    Tomatoes, its cells and report under ``tmp_path``."""
    raw["pipeline"] = ["teacher", "distill"]
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": str(base), "output_dir": str(tmp_path / "cells"),
                                     "report_dir": str(tmp_path / "report"), "tasks": {"rotten_tomatoes": {}},
                                     **fields}))
    return study


@pytest.mark.slow
def test_a_stopped_study_stops_its_cells_and_resumes_them(tmp_path, tiny_bert, sentiment_dir):
    """SIGTERM (a time limit) to tools/report.py stops the running cell, which checkpoints;
    the same command then resumes the cell from that checkpoint instead of starting over."""
    import os
    import signal
    import time

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1000, checkpoint_every=4, log_every=2)
    study = write_study(tmp_path, raw, seeds=[1], methods=["kd"], settings={"s": {}})
    log = tmp_path / "cells" / "rotten_tomatoes" / "s" / "seed1" / "logs" / "kd.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE")}

    def run_until(ready) -> str:
        proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "report.py"), "--study", str(study)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            deadline = time.time() + 300
            while not ready():
                assert proc.poll() is None and time.time() < deadline, (proc.poll(), log.read_text()[-2000:])
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)  # to tools/report.py alone, as a time limit would
            out = proc.communicate(timeout=120)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode != 0 and "interrupted; rerun the same command" in out, out[-2000:]
        left = subprocess.run(["pgrep", "-f", str(tmp_path / "cells")], capture_output=True, text=True).stdout
        assert not left.strip(), f"cell processes left running: {left}"
        return log.read_text()

    latest = tmp_path / "cells" / "rotten_tomatoes" / "s" / "seed1" / "checkpoints" / "teacher" / "latest"
    first = run_until(latest.is_file)  # into the teacher stage, past its first checkpoint (speed-independent)
    assert "received SIGTERM; asking the running stage to checkpoint" in first
    second = run_until(lambda: "resuming at micro-step" in log.read_text()[len(first):])
    resumed = second[len(first):].split("resuming at micro-step ")[1].split()[0]
    stopped = first.split("teacher: stopped at micro-step ")[1].split(";")[0]
    assert int(resumed) == int(stopped) > 0, (resumed, stopped)  # where the first run stopped, not the start


def _record(task, setting, seed, method, test, gap=0.1):
    from pathlib import Path

    from pipeline.study.cells import Cell

    cell = Cell(task, setting, seed, method, Path("cells") / task / setting / f"seed{seed}", ())
    return {"cell": cell, "scores": {"dev": {"accuracy": test}, "test": {"accuracy": test}}, "best_dev": test,
            "gap_end": gap, "gap_curve": [], "losses": {}, "flatness": None}


def test_findings_are_paired_by_seed_and_pooled_over_groups(tmp_path):
    from pipeline.study.findings import check_finding
    from pipeline.study.report import write_report
    from pipeline.study.spec import FlatnessSpec, StudySpec

    # cr-ild beats kd by exactly 1 point on every seed while the seeds themselves vary by 10:
    # paired, that is a sure effect; unpaired it would drown in the seed spread
    records = {}
    for task in ("rotten_tomatoes", "snli"):
        records[(task, "few")] = {
            "kd": [_record(task, "few", s, "kd", 0.60 + 0.1 * i) for i, s in enumerate((1, 2, 3))],
            "cr-ild": [_record(task, "few", s, "cr-ild", 0.61 + 0.1 * i) for i, s in enumerate((1, 2, 3))]}
    records[("snli", "few")]["cr-ild"].pop()  # seed 3 missing: only seeds 1 and 2 pair up there
    metric_of = {"rotten_tomatoes": "accuracy", "snli": "accuracy"}
    one = check_finding({("rotten_tomatoes", "few"): records[("rotten_tomatoes", "few")]}, "s", "cr-ild", "kd",
                        "test", "test", metric_of)
    assert len(one.diffs) == 3 and abs(one.diff - 0.01) < 1e-9 and one.se < 1e-9 and one.verdict == "held"
    assert abs(one.mean_better - 0.71) < 1e-9 and abs(one.mean_worse - 0.70) < 1e-9
    pooled = check_finding(records, "s", "cr-ild", "kd", "test", "test", metric_of)
    assert len(pooled.diffs) == 5 and pooled.verdict == "held"
    worse = check_finding(records, "s", "kd", "cr-ild", "test", "test", metric_of)
    assert worse.verdict == "did not hold"

    spec = StudySpec(base="b.yaml", output_dir="cells", report_dir=str(tmp_path / "report"), seeds=[1, 2, 3],
                     methods=["kd", "cr-ild"], tasks={"rotten_tomatoes": {}, "snli": {}}, settings={"few": {}},
                     flatness=FlatnessSpec(), eval_splits=["dev", "test"])
    write_report(spec, records, {}, ["snli/few/seed3/cr-ild"], [], ["header"], metric_of)
    text = (tmp_path / "report" / "README.md").read_text()
    assert text.index("## The paper's findings, all tasks and settings together") < text.index("**11 of 12 runs")
    row = next(line for line in text.splitlines() if line.startswith("| CR-ILD beats prediction-layer KD alone |"))
    assert "held (+1.0) | held (+1.0) | **held** (+1.00 ± 0.00, 5 seeds)" in row
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["findings"]
    assert [c["n"] for c in summary["pooled"] if c["better"] == "cr-ild" and c["worse"] == "kd"] == [5]
    assert summary["snli/few"][0]["verdict"] == "held"
    page = (tmp_path / "report" / "index.html").read_text()  # the same report for a browser
    assert page.startswith("<!DOCTYPE html>") and "<title>Distillation methods compared" in page
    assert "<td>CR-ILD beats prediction-layer KD alone</td>" in page and "<strong>held</strong> (+1.00" in page


def test_the_report_names_students_that_predict_one_class(tmp_path):
    """A student can score above chance while it predicts one class for every example (an
    imbalanced dev/test split): the table gets the best constant prediction as a reference
    row, and each such model (a teacher too) is named with its seeds, in the page and in summary.json."""
    from pipeline.study.report import write_report
    from pipeline.study.spec import FlatnessSpec, StudySpec

    one_class = {"dev": {"label": "pos", "accuracy": 0.549}, "test": {"label": "pos", "accuracy": 0.562}}

    def rec(method, seed, counts):
        r = _record("rotten_tomatoes", "imb", seed, method, 0.562)
        r.update(predicted={"dev": counts, "test": counts}, one_class=one_class)
        return r

    records = {("rotten_tomatoes", "imb"): {
        "kd": [rec("kd", s, {"neg": 10, "pos": 90}) for s in (1, 2)],
        "cr-ild": [rec("cr-ild", 1, {"neg": 0, "pos": 100}), rec("cr-ild", 2, {"neg": 3, "pos": 97}),
                   rec("cr-ild", 3, {"neg": 0, "pos": 100})]}}
    spec = StudySpec(base="b.yaml", output_dir="cells", report_dir=str(tmp_path / "report"), seeds=[1, 2, 3],
                     methods=["kd", "cr-ild"], tasks={"rotten_tomatoes": {}}, settings={"imb": {}},
                     flatness=FlatnessSpec(), eval_splits=["dev", "test"])
    teachers = {("rotten_tomatoes", "imb"): [rec("teacher", 2, {"neg": 0, "pos": 100})]}
    write_report(spec, records, teachers, [], [], ["header"], {"rotten_tomatoes": "accuracy"})
    lines = (tmp_path / "report" / "README.md").read_text().splitlines()
    assert "| one class ('pos') | – | – | 54.90 | 56.20 | – | – |" in lines
    assert "- cr-ild: 'pos', seeds 1, 3" in lines and "- teacher: 'pos', seed 2" in lines
    assert not any(line.startswith("- kd:") for line in lines)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["rotten_tomatoes/imb"]["one_class"]
    assert summary["reference"] == one_class
    assert summary["predicts_one_class"] == [{"method": "teacher", "label": "pos", "seeds": [2]},
                                             {"method": "cr-ild", "label": "pos", "seeds": [1, 3]}]

    for recs in [*records[("rotten_tomatoes", "imb")].values(), *teachers.values()]:  # scored before they said
        for r in recs:
            del r["predicted"], r["one_class"]
    write_report(spec, records, teachers, [], [], ["header"], {"rotten_tomatoes": "accuracy"})
    assert "one class" not in (tmp_path / "report" / "README.md").read_text()
    assert "one_class" not in json.loads((tmp_path / "report" / "summary.json").read_text())["rotten_tomatoes/imb"]


def test_report_only_selects_cells_by_label_prefix(tmp_path):
    """--only with a prefix that matches no cell is a one-line error naming it; a prefix
    selects whole path segments (``rotten`` is not ``rotten_tomatoes``)."""
    from pipeline.study.command import _selects

    assert _selects("snli", "snli/noise-0.3/seed42/kd") and _selects("snli/noise-0.3/", "snli/noise-0.3/seed42/kd")
    assert not _selects("sn", "snli/noise-0.3/seed42/kd") and not _selects("snli/noise", "snli/noise-0.3/seed42/kd")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "base": str(REPO / "jobs" / "report_base.yaml"), "output_dir": str(tmp_path / "cells"),
        "report_dir": str(tmp_path / "report"), "seeds": [1], "methods": ["kd"],
        "tasks": {"rotten_tomatoes": {}}, "settings": {"few": {}}}))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), "--study", str(study),
                           "--only", "rotten"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"crild: error: {study}: --only rotten: no cell of the study matches "
        "(labels look like rotten_tomatoes/few/seed1/kd)")
    assert not (tmp_path / "report").exists() and not (tmp_path / "cells").exists()
    proc = subprocess.run([sys.executable, "-m", "pipeline.study.records", str(study), "rotten_tomatoes/few/seed9/kd"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"crild: error: {study}: no cell 'rotten_tomatoes/few/seed9/kd' in this study"), proc.stderr


def test_study_records_are_not_ignored_by_git():
    """The records are the study's results and are committed: an ignore rule for run folders
    (``runs/``) once matched them too."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    from pipeline.study.cells import cells
    from pipeline.study.records import record_path
    from pipeline.study.spec import load_study

    spec = load_study(str(REPO / "jobs" / "studies" / "offline.yaml"))
    paths = [str(record_path(spec, cell, teacher)) for cell in cells(spec)[:2] for teacher in (False, True)]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and not proc.stdout, f"ignored by git: {proc.stdout}"
    run_dir = str(cells(spec)[0].run_dir / "student_kd" / "model.safetensors")  # run folders stay ignored
    assert subprocess.run(["git", "check-ignore", "-q", run_dir], cwd=REPO).returncode == 0


def test_variants_are_presets_with_overrides_in_their_settings_only(tmp_path):
    """The committed study: the supplementary variants run in the settings they name, with
    each task's own supplement; presets run everywhere."""
    from pipeline.distill.presets import resolve_phases
    from pipeline.study.cells import cell_config, cells
    from pipeline.study.spec import load_study

    spec = load_study(str(REPO / "jobs" / "studies" / "offline.yaml"))
    all_cells = cells(spec)
    by = {(c.task, c.setting, c.seed, c.method): c for c in all_cells}
    assert ("snli", "imbalance-10", 42, "kd") in by and ("snli", "imbalance-10", 42, "cr-ild-supp") not in by
    assert len(all_cells) == 2 * 3 * 3 * 9 + 2 * 2 * 3 * 2  # presets everywhere, variants in two settings
    for task, supplement in (("rotten_tomatoes", "rotten_tomatoes_plot"), ("snli", "snli")):
        cfg = cell_config(spec, by[(task, "noise-0.3", 43, "cr-ild-supp")])
        d = cfg.stages.distill
        assert d.preset == "cr-ild" and [s.task.name for s in d.supplementary] == [supplement]
        assert d.output == "student_cr-ild-supp" and cfg.task.label_noise == 0.3 and cfg.seed == 43
        assert [p.name for p in resolve_phases(d)] == ["ild_supplementary", "ild", "kd"]
        assert (d.ild_supplementary.epochs, d.ild_supplementary.learning_rate) == (d.ild.epochs, d.ild.learning_rate)
    plain = cell_config(spec, by[("snli", "few-sample-1000", 42, "cr-ild")]).stages.distill
    assert plain.supplementary == [] and plain.output == "student_cr-ild"


def test_less_gap_findings_favour_the_smaller_gap():
    from pipeline.study.findings import check_finding

    metric_of = {"rotten_tomatoes": "accuracy"}
    records = {("rotten_tomatoes", "few"): {
        "l-ild-supp": [dict(_record("rotten_tomatoes", "few", s, "l-ild-supp", 0.7), gap_end=0.10 + 0.01 * s)
                       for s in (1, 2, 3)],
        "l-ild": [dict(_record("rotten_tomatoes", "few", s, "l-ild", 0.7), gap_end=0.15 + 0.01 * s)
                  for s in (1, 2, 3)]}}
    less = check_finding(records, "s", "l-ild-supp", "l-ild", "less_gap", "test", metric_of)
    assert abs(less.diff - 0.05) < 1e-9 and less.verdict == "held"
    more = check_finding(records, "s", "l-ild-supp", "l-ild", "gap", "test", metric_of)
    assert more.verdict == "did not hold"


def test_a_sweep_compares_every_point_with_its_reference_on_the_same_seeds(tmp_path):
    """The sensitivity report: per point the paired difference to the reference, bold beyond
    two standard errors either way, the term's share of the ILD loss, and a plot."""
    from pipeline.study.report import write_report
    from pipeline.study.spec import StudySpec
    from pipeline.study.sweeps import term_share

    def rec(method, seed, test, gap, share):
        r = _record("rotten_tomatoes", "few", seed, method, test, gap)
        r["losses"] = {"ild/train/loss": [[4, 2.0], [8, 1.0]],
                       "ild/train/consistency_weighted": [[4, 2.0 * share], [8, 1.0 * share]]}
        return r

    records = {("rotten_tomatoes", "few"): {
        "base": [rec("base", s, 0.70 + 0.05 * s, 0.20, 0.0) for s in (1, 2, 3, 4, 5)],
        "w1": [rec("w1", s, 0.70 + 0.05 * s + 0.001 * (-1) ** s, 0.15 + 0.001 * s, 0.25) for s in (1, 2, 3, 4, 5)],
        "w10": [rec("w10", s, 0.60 + 0.05 * s + 0.001 * s, 0.20, 0.5) for s in (1, 2, 3, 4, 5)]}}
    assert term_share(records[("rotten_tomatoes", "few")]["w1"][0]) == pytest.approx(0.25)
    spec = StudySpec(base="b.yaml", output_dir="cells", report_dir=str(tmp_path / "report"), seeds=[1, 2, 3, 4, 5],
                     methods=["base", "w1", "w10"],
                     variants={"base": {"preset": "cr-ild"}, "w10": {"preset": "cr-ild"},
                               "w1": {"preset": "cr-ild", "description": "weight 1, a plot supplement",
                                      "settings": ["few"], "overrides": {"stages.distill.consistency.weight": 1.0},
                                      "tasks": {"rotten_tomatoes": {"stages.distill.supplementary": [
                                          {"task": {"name": "rotten_tomatoes_plot"}, "ratio": 1.0}]}}}},
                     tasks={"rotten_tomatoes": {}}, settings={"few": {}}, title="Sensitivity",
                     findings=[{"statement": "w1 narrows the gap", "better": "w1", "worse": "base",
                                "quantity": "less_gap"}],
                     sweeps=[{"name": "weight", "x": "weight", "reference": "base", "log_x": True,
                              "points": [{"x": 0, "method": "base"}, {"x": 1, "method": "w1"},
                                         {"x": 10, "method": "w10"}]}])
    write_report(spec, records, {}, [], [], ["header"], {"rotten_tomatoes": "accuracy"})
    text = (tmp_path / "report" / "README.md").read_text()
    assert text.startswith("# Sensitivity\n") and "Checks of the findings:" in text
    # the report says what each variant ran, without the study file beside it
    assert "- **w1**: weight 1, a plot supplement (preset `cr-ild`, in few only); " \
           "`stages.distill.consistency.weight: 1.0`\n  - rotten_tomatoes: `stages.distill.supplementary: " \
           "[{\"task\": {\"name\": \"rotten_tomatoes_plot\"}, \"ratio\": 1.0}]`\n" in text
    assert "- **base**: (preset `cr-ild`)\n" in text
    assert "- **held**: w1 narrows the gap." in text
    row = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| 1 |")
           or line.startswith("| 10 |") or line.startswith("| 0 |")}
    # w1: the test difference is noise (not bold), the gap 4.7 points narrower on every seed (bold)
    assert row["w1"] == "| 1 | w1 | 5 | 84.98 ± 3.54 | 15.30 ± 0.07 | 25.0% | -0.02 ± 0.05 | **-4.70 ± 0.07** |"
    assert "| **-9.70 ± 0.07** | +0.00 ± 0.00 |" in row["w10"]  # 10 points worse on test: bold
    assert "| 0 | base | 5 |" in row["base"] and row["base"].endswith("| 0.0% | – | – |")
    assert (tmp_path / "report" / "sweep_weight_rotten_tomatoes_few.png").stat().st_size > 1000
    sweep = json.loads((tmp_path / "report" / "summary.json").read_text())["sweeps"]["rotten_tomatoes/few"]["weight"]
    assert [p["method"] for p in sweep] == ["base", "w1", "w10"] and sweep[0]["vs_reference"]["test"] is None
    assert sweep[2]["vs_reference"]["test"]["n"] == 5


def test_a_study_names_only_its_own_methods_in_findings_and_sweeps(tmp_path):
    from pipeline.errors import UserError
    from pipeline.study.spec import load_study

    base = {"base": "b.yaml", "output_dir": "o", "report_dir": "r", "seeds": [1], "methods": ["kd", "cr-ild"],
            "tasks": {"rotten_tomatoes": {}}, "settings": {"s": {}}}
    for extra, expected in [
            ({"findings": [{"statement": "x", "better": "cr-ild", "worse": "pkd"}]},
             "findings[0].worse: 'pkd' is not one of the study's methods"),
            ({"sweeps": [{"name": "w", "x": "w", "reference": "kd", "points": [{"x": 1, "method": "cr-ilf"}]}]},
             "sweeps[0].points[0].method: 'cr-ilf' is not one of the study's methods; did you mean 'cr-ild'?"),
            ({"findings": [{"statement": "x", "better": "cr-ild", "worse": "kd", "quantity": "gapp"}]},
             "findings[0].quantity: expected test, gap, less_gap or flat, got 'gapp'; did you mean 'gap'?")]:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        with pytest.raises(UserError) as err:
            load_study(str(path))
        assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
    assert load_study(str(REPO / "jobs" / "studies" / "sensitivity.yaml")).title.startswith("Sensitivity")


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "argument --jobs: expected an integer >= 1, got '0'"),  # ran no cell, and waited for ever
    (["--max-runs", "-1"], "argument --max-runs: expected an integer >= 0, got '-1'"),  # dropped the last cell
    (["--jobs", "two"], "argument --jobs: expected an integer >= 1, got 'two'"),
])
def test_study_counts_out_of_range_are_usage_errors(argv, message, capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["study", *argv])
    assert exc.value.code == 2 and capsys.readouterr().err == f"crild study: error: {message}; see crild study --help\n"


def test_a_run_configuration_and_a_study_file_given_for_each_other_say_so(tmp_path, capsys):
    from pipeline.cli import main

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output_dir": "o", "task": {"name": "rotten_tomatoes"}, "pipeline": ["teacher"]}))
    for argv in (["study", "--study", str(run)], ["run", str(REPO / "jobs" / "studies" / "offline.yaml")]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crild: error: {run}: is a run configuration (it has pipeline, task), not a study file; run it "
                   f"with `crild run {run}`, or give crild study a study file that names it as its base (see jobs/studies/)",
                   f"crild: error: {REPO / 'jobs' / 'studies' / 'offline.yaml'}: is a study file (it has base and "
                   f"methods), not a run configuration; run it with `crild study "
                   f"{REPO / 'jobs' / 'studies' / 'offline.yaml'}`"]


def test_a_method_that_cannot_work_is_refused_before_any_cell_runs(tmp_path, tiny_bert, sentiment_dir, capsys):
    """Every cell to run gets crild run's checks before the first stage, before any cell runs:
    a setting that breaks one method is one line now, not a failed cell after the others."""
    def refusal(**fields) -> tuple:
        study = write_study(tmp_path, tiny_run_config(tmp_path, tiny_bert, sentiment_dir), **fields)
        code, _, err = study_here(capsys, study)
        assert code == 2 and not (tmp_path / "cells").exists()
        return study, err.strip().splitlines()

    study, err = refusal(seeds=[1, 2], methods=["cr-ild"], settings={"heads-5": {"stages.distill.relation_heads": 5}})
    assert err == [
        f"crild: error: {study}: cell rotten_tomatoes/heads-5/seed1/cr-ild: stages.distill.relation_heads: 5 relation "
        f"heads do not divide the teacher's hidden size 32 (the distill stage's; checked before the first stage runs)"]
    # a split the task's data lacks was found when the first cell had trained and came to be scored
    study, err = refusal(seeds=[1], methods=["kd"], settings={"s": {}}, eval_splits=["dev", "validation"])
    assert err == [f"crild: error: {study}: eval_splits: 'validation' is not a held-out split of task rotten_tomatoes "
                   f"(available: dev, test); crild calls the hub's 'validation' split 'dev'"]


def test_a_study_compares_methods_on_a_task_of_ones_own_and_a_misspelled_task_names_the_study(tmp_path,
                                                                                               tiny_bert):
    from helpers import TONES, write_tone_task

    from pipeline.data.tasks import task_spec
    from pipeline.errors import UserError
    from pipeline.study.cells import cell_config, cells
    from pipeline.study.spec import load_study

    data = write_tone_task(tmp_path / "tone")
    tone = {"task.labels": TONES, "task.metric": "macro_f1", "task.data_dir": str(data),
            "task.columns.text_a": "review", "task.columns.label": "tone"}
    study = write_study(tmp_path, tiny_run_config(tmp_path, tiny_bert, data), seeds=[1], methods=["kd"],
                        settings={"plain": {}})
    raw = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**raw, "tasks": {"tone": tone}}))
    spec = load_study(str(study))
    [cell] = cells(spec)
    cfg = cell_config(spec, cell)
    assert (cfg.task.name, cfg.task.labels, task_spec(cfg.task).main_metric) == ("tone", TONES, "macro_f1")
    study.write_text(yaml.safe_dump({**raw, "tasks": {"rotten_tomatos": {}}}))
    spec = load_study(str(study))
    with pytest.raises(UserError) as err:
        cell_config(spec, cells(spec)[0])
    assert str(err.value).startswith(f"{study}: cell rotten_tomatos/plain/seed1/kd: ")
    assert "unknown task 'rotten_tomatos'; did you mean 'rotten_tomatoes'?" in str(err.value)
