"""Nothing crild did not write is ever replaced or deleted: output names stay inside
output_dir and off other stages' folders; a folder is replaced only by the stage that wrote
it; a temporary folder a killed writer left is cleaned up; a teacher given by path is checked
against its content hashes like the run's own."""
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import tiny_run_config

from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.outputs.atomic import atomic_output
from pipeline.outputs.manifest import is_complete
from pipeline.stages import RESERVED_FOLDERS, STAGES, produced_models


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("output", [".", "..", "/tmp/elsewhere", "../up", "a/b", "teacher", "eval", "checkpoints",
                                    "student.phases", ".hidden"])
def test_output_names_stay_inside_output_dir_and_off_other_stages_folders(tmp_path, tiny_bert, sentiment_dir, capsys,
                                                                         output):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", "distill"]
    raw["stages"]["distill"] = {"output": output, "teacher_model": str(tiny_bert)}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    for command in ("config", "run"):
        code, err = run_cli([command, str(config)], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"crild: error: {config}: stages.distill.output: ")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # nothing ran, nothing moved


def test_the_file_systems_root_or_the_home_folder_is_not_an_output_dir(monkeypatch, tmp_path):
    """A run writes teacher/, eval/, checkpoints/, tensorboard/ straight into output_dir:
    'output_dir: /' (or ~) spread them over the root (or the home folder) without a word."""
    from pipeline.outputs.lock import _prepare

    for path, what in ((Path("/"), "the file system's root"), (tmp_path, "your home folder")):
        monkeypatch.setattr(Path, "home", lambda: tmp_path)
        with pytest.raises(UserError, match=f"output_dir: '{path}' is {what}; crild writes its stage folders"):
            _prepare(path)
    _prepare(tmp_path / "runs" / "x")  # a folder of its own, made as needed
    assert (tmp_path / "runs" / "x").is_dir()


def test_a_run_refused_before_its_first_stage_leaves_no_folder_it_made_only_for_its_lock(tmp_path, tiny_bert,
                                                                                         sentiment_dir, capsys):
    """A mistake found by the checks before the first stage left an output_dir (and the folders
    above it that the run had made) holding only the run's lock file; a folder that was there
    before, or that holds anything else, stays."""
    from pipeline.outputs.lock import RunLock

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["stages"]["teacher"]["deepspeed_config"] = str(tmp_path / "missing.json")
    for out, existed in ((tmp_path / "new" / "runs" / "a", False), (tmp_path / "kept", True)):
        if existed:
            out.mkdir()
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({**raw, "output_dir": str(out)}))
        code, err = run_cli(["run", str(config)], capsys)
        assert code == 2 and len(err) == 1 and "missing.json" in err[0], err
        assert out.is_dir() == existed
    assert not (tmp_path / "new").exists()
    lock = RunLock(tmp_path / "held" / "run").acquire()
    (tmp_path / "held" / "run" / "teacher").mkdir()  # something written: the folder is the run's now
    lock.release()
    assert (tmp_path / "held" / "run" / "teacher").is_dir()


def test_a_lock_taken_on_the_file_a_releasing_run_removed_is_taken_again(tmp_path, monkeypatch):
    """A run that releases a folder it made only for its lock removes the lock file: a run that
    had opened that file just before must not hold a lock on a file no path names (a third
    run would then create a new one and hold it too)."""
    import os

    from pipeline.outputs import lock

    out = tmp_path / "run"
    flock, calls = lock._flock, []

    def removed_between_open_and_flock(fd, kind):
        if not calls:
            os.unlink(lock.lock_path(out))  # the releasing run, between this run's open and flock
        calls.append(kind)
        return flock(fd, kind)

    monkeypatch.setattr(lock, "_flock", removed_between_open_and_flock)
    held = lock.RunLock(out).acquire()
    assert os.path.samestat(os.fstat(held.fd), os.stat(lock.lock_path(out)))
    assert calls[:2] == [lock.fcntl.LOCK_EX] * 2
    held.release()


def test_an_output_dir_under_a_working_directory_that_is_not_utf8_is_refused_before_it_is_made(monkeypatch, tmp_path):
    """TensorBoard, manifests and logs record output_dir as UTF-8 text: a relative output_dir
    under a folder whose name has a byte that is not UTF-8 failed in the middle of the stage."""
    import os

    from pipeline.outputs.lock import _prepare

    cwd = Path(os.fsdecode(bytes(tmp_path) + b"/cw\xfe"))
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(UserError, match=r"output_dir: '.*/cw\\udcfe/runs' is not a UTF-8 path: the byte 0xfe is "
                                        r"not UTF-8"):
        _prepare(Path("runs"))
    assert list(cwd.iterdir()) == []


def test_the_baseline_output_is_not_the_students_when_both_run():
    with pytest.raises(UserError, match="'student_finetuned' is the baseline stage's output"):
        from_dict({"pipeline": ["teacher", "distill", "baseline"],
                   "stages": {"distill": {"output": "student_finetuned"}}})
    from_dict({"pipeline": ["teacher", "distill"], "stages": {"distill": {"output": "student_finetuned"}}})


def test_every_fixed_stage_folder_is_reserved():
    cfg = from_dict({})
    for name, stage in STAGES.items():
        if name not in ("distill", "baseline"):  # their output is stages.distill.output
            assert stage.output(cfg) in RESERVED_FOLDERS, name


def test_only_a_folder_the_same_stage_wrote_is_replaced(tmp_path):
    cfg = from_dict({})
    user = tmp_path / "teacher"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and was not written by crild"):
        with atomic_output(user, cfg, "teacher", "f1"):
            pass
    assert (user / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".teacher.*"))

    ours = tmp_path / "eval"
    with atomic_output(ours, cfg, "evaluate", "f1") as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_output(ours, cfg, "evaluate", "f2") as tmp:  # the same stage: replaced
        (tmp / "a.txt").write_text("2")
    assert (ours / "a.txt").read_text() == "2" and is_complete(ours)
    with pytest.raises(UserError, match="written by crild's evaluate stage"):
        with atomic_output(ours, cfg, "teacher", "f3"):
            pass
    assert (ours / "a.txt").read_text() == "2"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_folder_not_the_stages_is_refused_before_anything_runs(tmp_path, tiny_bert, sentiment_dir, capsys, stage):
    """A folder of the user's where a late stage writes (or one whose manifest is damaged) was
    refused only when that stage came to write it, after the teacher and the stage itself had
    trained. crild run now refuses it before the first stage; the stage itself when it starts."""
    out = tmp_path / "run"
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", stage] if stage != "teacher" else ["teacher"]
    raw["stages"]["distill"] = {"teacher_model": str(tiny_bert), "phases": ["kd"]}
    cfg = from_dict(raw)
    from pipeline.config import stage_config
    target = out / STAGES[stage].output(stage_config(cfg, stage))
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    code, err = run_cli(["run", str(config)], capsys)
    assert code == 2 and err == [f"crild: error: {target}: already exists and was not written by crild; crild replaces "
                                 f"only what its {STAGES[stage].owner} stage wrote there: move it away or choose another "
                                 f"output_dir or output name (the {stage} stage's; checked before the first stage runs)"]
    assert [p.name for p in out.iterdir() if p.name != ".crild.lock"] == [target.name]  # nothing trained
    assert (target / "notes.txt").read_text() == "mine"
    code = main(["status", str(config)])
    assert code in (0, None) and f"  {stage}" in (said := capsys.readouterr().out)
    assert f"blocked ({target}: already exists and was not written by crild;" in said, said
    if stage == "teacher":  # the stage on its own refuses as it starts, before any training
        (target / "crild_stage.json").write_text('{"stage": "teach')
        code, err = run_cli([stage, str(config)], capsys)
        assert code == 2 and err[-1].startswith(f"crild: error: {target}: already exists and its crild_stage.json "
                                                f"cannot be read, so crild cannot tell that its teacher stage wrote it")
        assert [p.name for p in out.iterdir() if p.name != ".crild.lock"] == [target.name]


def test_a_run_output_without_a_readable_manifest_is_named_not_left_out_silently(tmp_path):
    from pipeline.evaluation.models import run_models

    cfg = from_dict({"output_dir": str(tmp_path)})
    with atomic_output(tmp_path / "student", cfg, "distill", "f") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "crild_stage.json").write_text("{")
    found, notes = run_models(cfg, [], "stages.evaluate.models", produced_models(cfg))
    assert list(found) == ["student"]
    assert notes == [f"note: {tmp_path / 'teacher'} is not a complete output of this run (its crild_stage.json is "
                     f"missing or cannot be read): left out; name it in stages.evaluate.models to include it"]


def test_a_student_under_a_name_of_its_own_is_scored_and_exported_by_default(tmp_path):
    """``stages.distill.output: student_kd`` names the run's student: evaluation and export read
    it by default, and are redone when it is rewritten (before, they read a folder called
    ``student`` only: the run scored and exported its teacher alone, without a word)."""
    from pipeline.evaluation.models import run_models
    from pipeline.stages import stage_fingerprint

    cfg = from_dict({"output_dir": str(tmp_path), "stages": {"distill": {"output": "student_kd"}}})
    assert produced_models(cfg) == ("teacher", "student_kd", "student_finetuned")
    fingerprints = []
    for version in ("first", "second"):
        with atomic_output(tmp_path / "student_kd", cfg, "distill", version) as tmp:
            (tmp / "model.safetensors").write_bytes(version.encode())
        found, notes = run_models(cfg, [], "stages.evaluate.models", produced_models(cfg))
        assert list(found) == ["student_kd"] and notes == []
        fingerprints.append((stage_fingerprint(cfg, "evaluate"), stage_fingerprint(cfg, "export")))
    assert fingerprints[0][0] != fingerprints[1][0] and fingerprints[0][1] != fingerprints[1][1]
    # a teacher given by path is not the run's to score (it may be a backbone): a note names it
    given = from_dict({"output_dir": str(tmp_path), "stages": {"distill": {"output": "student_kd",
                                                                           "teacher_model": "/models/mine"}}})
    assert run_models(given, [], "stages.export.models", produced_models(given))[1] == [
        "note: the student's teacher, stages.distill.teacher_model '/models/mine', is not among the models a run "
        "exports by default; name it in stages.export.models beside the run's models to compare them"]


def test_a_temporary_folder_left_by_a_killed_writer_is_removed(tmp_path):
    cfg = from_dict({})
    left = tmp_path / ".eval.tmp99999"
    left.mkdir()
    (left / "half.json").write_text("{")
    with atomic_output(tmp_path / "eval", cfg, "evaluate", "f") as tmp:
        (tmp / "results.json").write_text("{}")
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_damaged_teacher_given_by_path_is_refused(tmp_path, tiny_bert, sentiment_dir, capsys):
    from pipeline import stage1_teacher
    from pipeline.training.stop import StopRequest

    cfg = from_dict(tiny_run_config(tmp_path / "t", tiny_bert, sentiment_dir, epochs=1))
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    teacher = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(Path(cfg.output_dir) / "teacher", teacher)
    weights = teacher / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte, the size unchanged
    weights.write_bytes(bytes(data))
    raw = tiny_run_config(tmp_path / "d", tiny_bert, sentiment_dir)
    raw["stages"]["distill"] = {"preset": "kd", "teacher_model": str(teacher)}
    config = tmp_path / "d.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code, err = run_cli(["distill", str(config)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"crild: error: stages.distill.teacher_model '{teacher}' failed its integrity check: "
                      f"{weights}: content differs from its recorded hash (corrupted)")
    assert not is_complete(tmp_path / "d" / "run" / "student")

    # crild status --verify finds such a byte in the run's own output, and exits 1, as a script's check
    # needs (sha256sum -c does); without --verify, or with the output intact, it reads the manifests only
    run_config = tmp_path / "t.yaml"
    run_config.write_text(yaml.safe_dump({**tiny_run_config(tmp_path / "t", tiny_bert, sentiment_dir, epochs=1),
                                          "pipeline": ["teacher"]}))
    for verify in ([], ["--verify"]):
        assert main(["status", str(run_config), *verify]) is None  # exit code 0
        assert capsys.readouterr().out.splitlines()[1] == "  teacher  complete"
    own = Path(cfg.output_dir) / "teacher" / "model.safetensors"
    own.write_bytes(bytes(data))
    assert main(["status", str(run_config)]) is None
    assert capsys.readouterr().out.splitlines()[1] == "  teacher  complete"
    with pytest.raises(SystemExit) as done:
        main(["status", str(run_config), "--verify"])
    assert done.value.code == 1 and capsys.readouterr().out.splitlines()[1] == (
        f"  teacher  damaged ({own}: content differs from its recorded hash (corrupted); crild run redoes it)")


def test_a_single_file_is_replaced_whole_and_leaves_no_temporary(tmp_path):
    from pipeline.outputs.atomic import replace_text

    path = tmp_path / "record.json"
    path.write_text("the old record")
    replace_text(path, '{"new": 1}\n')
    assert path.read_text() == '{"new": 1}\n' and list(tmp_path.iterdir()) == [path]


def test_a_checkpoint_folder_crild_did_not_make_is_never_removed_or_moved(tmp_path):
    """The stage refuses to write among a user's files (the catalogue runs it through crild);
    the runner's clean-up and stale-checkpoint archive leave such a folder as it is, and
    remove or move crild's own."""
    from pipeline.training.checkpoint_folders import (
        FINGERPRINT_FILE,
        archive_stale,
        claim_checkpoints,
        made_by_crild,
        remove_checkpoints,
    )

    mine = tmp_path / "checkpoints" / "teacher"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="a folder crild did not make is where this stage keeps its checkpoints"):
        claim_checkpoints(mine)
    remove_checkpoints(mine)
    assert archive_stale(mine, ("any",)) is None and (mine / "notes.txt").read_text() == "mine"

    ours = tmp_path / "checkpoints" / "distill"
    claim_checkpoints(ours)  # a new folder: made and marked
    claim_checkpoints(ours)  # and claimed again on resume
    assert made_by_crild(ours)
    (ours / "ild").mkdir()
    (ours / "ild" / FINGERPRINT_FILE).write_text("earlier")  # the stage's fingerprint as an earlier version made it
    assert archive_stale(ours, ("new", "earlier")) is None
    (ours / "ild" / FINGERPRINT_FILE).write_text("old")
    assert archive_stale(ours, ("new", "earlier")) == tmp_path / "checkpoints" / "distill.stale-1"
    from pipeline.config import from_dict
    from pipeline.launch.status import status_lines

    assert status_lines(from_dict({"output_dir": str(tmp_path), "pipeline": ["distill"]}))[-1] == (
        f"  set aside: {tmp_path}/checkpoints/distill.stale-1 (3 bytes; checkpoints of another configuration or "
        f"other inputs, never read again: delete them once you no longer need them)")
    claim_checkpoints(ours)
    remove_checkpoints(ours)
    assert not ours.exists()
    (tmp_path / "checkpoints" / "file").write_text("x")
    with pytest.raises(UserError, match="a file is where this stage keeps its checkpoints"):
        claim_checkpoints(tmp_path / "checkpoints" / "file")
