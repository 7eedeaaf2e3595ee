"""A run's configuration is the one it started with: a YAML (or a DeepSpeed config it names)
edited while the run's earlier stages train, or while a submitted job waits in the queue,
stops the run before the next stage, in one line, instead of running its remaining stages
on another configuration. The same command then goes on from the complete stages."""
import json

import pytest
import yaml
from helpers import Crild, tiny_run_config

from pipeline.cli import main
from pipeline.config import LAUNCHED_ENV, check_launched, launched_digest, load_config
from pipeline.errors import UserError
from pipeline.outputs.manifest import is_complete

CHANGED = ("changed since this run started (or a DeepSpeed config it names did); its remaining stages would run "
           "another configuration than its first: run the command again, which keeps the complete stages that the "
           "change leaves valid and redoes the rest")


def test_a_stage_refuses_a_configuration_other_than_its_runs(tmp_path, tiny_bert, sentiment_dir, monkeypatch,
                                                             capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    raw = {**tiny_run_config(tmp_path, tiny_bert, sentiment_dir), "deepspeed_config": str(ds)}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    launched = launched_digest(load_config(path))
    check_launched(load_config(path), launched)  # the same file: nothing to say
    check_launched(load_config(path, ["stages.teacher.epochs=2"]), launched)  # an override to what it says
    with pytest.raises(UserError, match="changed since this run started"):
        check_launched(load_config(path, ["stages.teacher.epochs=3"]), launched)

    for edit in ("stages.evaluate.batch_size", "deepspeed"):
        if edit == "deepspeed":
            path.write_text(yaml.safe_dump(raw))
            ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "gradient_clipping": 1.0}))
        else:
            path.write_text(yaml.safe_dump({**raw, "stages": {**raw["stages"], "evaluate": {"batch_size": 4}}}))
        monkeypatch.setenv(LAUNCHED_ENV, launched)  # as crild run or crild submit hand it to the stage
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(["teacher", str(path)])
        assert done.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"crild: error: {path}: {CHANGED}"], edit
        assert not (tmp_path / "run" / "teacher").exists()


@pytest.mark.slow
def test_an_edit_while_the_teacher_trains_stops_the_run_before_the_next_stage(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=60, checkpoint_every=1000, eval_every=1000)
    raw["pipeline"] = ["teacher", "evaluate"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = Crild("run", str(path))
    run.wait_for("optimizer steps")
    raw["stages"]["evaluate"] = {"batch_size": 4}  # the user prepares the next experiment in the same file
    path.write_text(yaml.safe_dump(raw))
    assert run.finish(timeout=300) == 2, run.output
    assert run.lines[-1] == f"crild: error: {path}: {CHANGED}", run.output
    assert "Traceback" not in run.output
    out = tmp_path / "run"
    assert is_complete(out / "teacher") and not (out / "eval").exists()

    again = Crild("run", str(path))
    assert again.finish(timeout=300) == 0, again.output
    assert "crild: teacher: complete for this configuration, skipped" in again.lines
    assert is_complete(out / "eval")
