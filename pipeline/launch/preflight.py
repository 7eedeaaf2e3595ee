"""What a stage would refuse when it starts, found from the configuration before a run's
first stage: ``crild run`` and ``crild submit`` check every stage they will run, so a
mistake in a late stage's settings is one line at once, not after the hours of the stages
before it.

Checked here: each training section's DeepSpeed config as that stage builds it for the
run's world size (batch sizes, ZeRO stage, what DeepSpeed itself rejects, ``on_nonfinite``
and ``compile`` against ZeRO-3); the student's shape; for distillation, the teacher's and
student's tokenizers and layer maps; for augmentation, the word vectors (a .npy header and
its word count, a text file's first lines) and the masked LM's vocabulary against the
student's; for export, ONNX Runtime; the data files a later stage reads and the first does
not (a supplementary task's, the test split), read through as that stage's reader reads
them. Models are judged from their configs and tokenizers, and the weights a stage will
read from the headers of their safetensors files (a truncated copy), not from the tensors.
What depends on the tokenized data (a stage shorter than its gradient accumulation) or on
the tensors of a model's weights is left to the stage. A teacher or student
that an earlier stage of the run writes is taken from the settings that stage trains it
from."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig, stage_config
from pipeline.data.augment import check_vectors, require_mlm_head
from pipeline.data.hub_data import is_own_hub
from pipeline.data.sources import available_eval_splits, checked_eval_splits, export_split, load_split, resolve_source
from pipeline.data.stress import apply_settings
from pipeline.data.tasks import task_spec
from pipeline.distill.layers import layer_layout
from pipeline.distill.presets import needs_teacher, reads_teacher_logits, resolve_phases
from pipeline.distill.teacher import tokenize_alike
from pipeline.errors import UserError
from pipeline.evaluation.models import model_names, teachers
from pipeline.export.quantize import check_int8_names
from pipeline.export.runtime import onnxruntime
from pipeline.models.compiling import check_compilable
from pipeline.models.loading import (
    check_labels,
    check_max_length,
    check_weights,
    encoder_config,
    load_tokenizer,
    missing_head_weights,
    quiet_libraries,
    read_model_config,
    require_trained,
    resolve_model,
)
from pipeline.outputs.manifest import is_complete, recorded_fingerprint
from pipeline.runtime.progress import note
from pipeline.stages import STAGES, check_output_folder, stage_fingerprints
from pipeline.training.ds_config import build_ds_config

STAND_IN_HIDDEN = 768  # sizes ZeRO buckets left "auto"; the config built here is only checked


def training_sections(cfg: RunConfig, name: str) -> list[tuple[str, object]]:
    """(section under ``stages.``, its TrainConfig) of each training stage ``name`` runs,
    for ``cfg`` as that stage runs it (``stage_config``)."""
    if name == "teacher":
        return [("teacher", cfg.stages.teacher)]
    if name in ("distill", "baseline"):
        return [(f"distill.{p.name}", getattr(cfg.stages.distill, p.name)) for p in resolve_phases(cfg.stages.distill)]
    return []


def check_stages(cfg: RunConfig, names, world_size: int, device_checks: bool = True) -> None:
    """Every check above, for stages ``names`` of ``cfg`` on ``world_size`` ranks (the
    stages that will run: a complete stage before them is skipped, and is not judged by
    this machine); ``device_checks`` False where the stages do not start here and now
    (``crild submit`` on a login node, ``crild config``): the devices are not judged, and the
    first stage's data files are read here as the later stages' are."""
    quiet_libraries()  # the readers below (datasets, transformers) would print progress bars
    if names:  # every stage reads the task's data: where it is (a folder, prepared) is known now
        try:
            resolve_source(cfg.task, task_spec(cfg.task))
        except UserError as err:
            raise UserError(f"{err} (checked before the first stage runs)") from None
    for name in names:
        stage_cfg = stage_config(cfg, name)
        try:
            check_output_folder(stage_cfg, name)
            for section, train in training_sections(stage_cfg, name):
                ds = build_ds_config(train.deepspeed_config or stage_cfg.deepspeed_config, train, world_size, None,
                                     stage_cfg.source, section, hidden_size=STAND_IN_HIDDEN,
                                     device_checks=device_checks)
                if stage_cfg.compile:
                    check_compilable(ds, f"{stage_cfg.source}: compile")
            if name in STAGE_CHECKS:
                STAGE_CHECKS[name](stage_cfg, names)
            _check_upstream(cfg, name, list(names))
        except UserError as err:
            raise UserError(f"{err} (the {name} stage's; checked before the first stage runs)") from None
    _check_data_read_later(cfg, list(names), first_reads_now=device_checks)
    for name in ("distill", "baseline"):
        if name in names:  # after every check: a run refused stays one line
            _note_larger_student(stage_config(cfg, name), teacher_trains="teacher" in names)


def _note_larger_student(cfg: RunConfig, teacher_trains: bool) -> None:
    """A note where the student is deeper or wider than its teacher: such a run trains
    without complaint, and has usually swapped ``student.backbone`` and the teacher. The
    teacher is the one ``_check_distillation`` judged (``teacher_trains``: a teacher stage
    runs now, not one complete and skipped)."""
    student, teacher = _distillation_sources(cfg, teacher_trains)
    if student is None or teacher is None:
        return
    name, where, teacher_config = teacher
    said = [f"{word} ({shown.format(getattr(student, key), getattr(teacher_config, key))})"
            for word, key, shown in (("deeper", "num_hidden_layers", "{} layers to {}"),
                                     ("wider", "hidden_size", "hidden {} to {}"))
            if getattr(student, key) > getattr(teacher_config, key)]
    if said:
        note(f"note: the student is {' and '.join(said)} than the teacher ({where}: {name}); distillation trains "
             f"a smaller student from a larger teacher, so check that the two are not swapped")


def _check_upstream(cfg: RunConfig, name: str, names: list[str]) -> None:
    """The outputs of earlier stages that stage ``name`` reads (``Stage.reads``) are complete
    in output_dir, or a stage that runs before it writes them: a teacher trained for hours,
    then the distillation stopped for augmented data no stage of the run was to make."""
    stage, out = STAGES[name], Path(cfg.output_dir)
    reads = stage.reads(stage_config(cfg, name))
    folders = {read: out / STAGES[read].output(stage_config(cfg, read)) for read in reads}
    missing = [read for read in reads if read not in names[:names.index(name)] and not is_complete(folders[read])]
    if not missing or (stage.reads_any and len(missing) < len(reads)):
        return
    if stage.reads_any:
        shown = ", ".join(f"{folders[read].name}/" for read in missing)
        raise UserError(f"{out}: none of {shown} is complete, and no stage that writes one runs before {name}; add "
                        f"one to pipeline before {name} (or run one first), or set {reads[missing[0]]}")
    read = missing[0]
    raise UserError(f"{folders[read]}: no complete output of the {read} stage, and no {read} stage runs before {name} "
                    f"to write it; add {read} to pipeline before {name} (or run it first), or set {reads[read]}")


def _splits_read(cfg: RunConfig, name: str) -> list[tuple[str, object, str]]:
    """(configuration key of a task, its TaskConfig, split) for each split stage ``name`` reads."""
    task, spec = cfg.task, task_spec(cfg.task)
    if name == "augment":
        return [("task", task, "train")]
    if name == "evaluate":
        return [("task", task, split) for split in cfg.stages.evaluate.splits or available_eval_splits(task, spec)]
    if name == "export":
        return [("task", task, export_split(task, spec, cfg.stages.export.split))]
    reads = [("task", task, "train")] + [("task", task, split) for split in available_eval_splits(task, spec)[:1]]
    if name == "distill":
        reads += [(f"stages.distill.supplementary[{i}].task", sup.task, "train")
                  for i, sup in enumerate(cfg.stages.distill.supplementary)]
    return reads


def _check_data_read_later(cfg: RunConfig, names: list[str], first_reads_now: bool = True) -> None:
    """Each data file a later stage reads and the first stage does not (a supplementary
    task's, the test split evaluation scores), read through now: a record the reader refuses
    is one line before the first stage, not after the hours of the stages before the one that
    reads it. The first stage's own files are read by that stage as it starts, where it starts
    now (``first_reads_now``); ``crild submit`` and ``crild config`` read them too, since
    that stage's job may start hours later, after a wait in the queue. GLUE's hub
    datasets are not files a user writes, and are left to the stage. A task's own hub dataset
    is read now, the first stage's splits too: ``crild submit`` runs this on a login node,
    which has the network that a compute node may lack, and datasets keeps what it loads;
    the commit a hub name without a pin is read at is said here, once, and handed down to
    the stages, which read it too."""
    first, said = (names[0] if names else None), set()
    seen = {(key, split) for key, task, split in _splits_read(stage_config(cfg, first), first)
            if not is_own_hub(task_spec(task))} if names and first_reads_now else set()
    for name in names:
        for key, task, split in _splits_read(stage_config(cfg, name), name):
            if (key, split) in seen:
                continue
            seen.add((key, split))
            spec = task_spec(task)
            try:
                if resolve_source(task, spec, key)[0] == "hub" and not is_own_hub(spec):
                    continue
                examples = load_split(task, spec, split, key)
                if examples.commit_note and examples.commit_note not in said:
                    said.add(examples.commit_note)
                    note(examples.commit_note)
                if split == "train" and key != "task":  # a supplement is drawn after its own settings
                    apply_settings(examples, task, spec, cfg.seed, key)
            except UserError as err:
                raise UserError(f"{err} (the {name} stage reads it; checked before the first stage runs)") from None


def _check_distillation(cfg: RunConfig, names) -> None:
    """The student, and where a phase reads the teacher: both tokenize alike where a phase
    needs it, and every phase's layer map fits both depths and widths."""
    d, s = cfg.stages.distill, cfg.student
    student_config, student_tokenizer = _check_student(cfg, names)
    phases = resolve_phases(d)
    if not needs_teacher(d, phases):
        return
    teacher = _teacher_source(cfg, teacher_trains="teacher" in names)
    if teacher is None or student_config is None:
        return
    name, random_init, where = teacher
    if random_init is None:
        held = _whole_weights(cfg, name, where)
        if held is not None and where == "stages.distill.teacher_model" and reads_teacher_logits(phases):
            _trained_classifier(cfg, name, where, held)
    teacher_config = encoder_config(name, where, random_init=random_init)
    check_max_length(teacher_config, cfg.task.max_length, where)  # the teacher reads every batch
    if not tokenize_alike(d, phases, _tokenizer(name, where), student_tokenizer, name, s.backbone):
        return  # a teacher that tokenizes differently serves prediction-layer terms only
    for phase in phases:
        layer_layout(d, phase, student_config, teacher_config)


def distillation_models(cfg: RunConfig) -> tuple:
    """The configs of the student and the teacher the distill stage of ``cfg`` reads (its
    run's pipeline deciding whether the teacher is the one a teacher stage trains), for
    ``plan_lines``; None for one an earlier stage writes or that is not there, or for the
    teacher where the preset needs none."""
    student, teacher = _distillation_sources(cfg, teacher_trains="teacher" in cfg.pipeline)
    return student, teacher and teacher[2]


def _distillation_sources(cfg: RunConfig, teacher_trains: bool) -> tuple:
    """``distillation_models``, with the teacher as (model, key naming it, config)."""
    student = None if _written_later(cfg, cfg.student.backbone) else _student_config(cfg)
    if not needs_teacher(cfg.stages.distill, resolve_phases(cfg.stages.distill)):
        return student, None
    try:
        teacher = _teacher_source(cfg, teacher_trains)
    except UserError:  # no teacher yet: the distill stage's own check says so where it runs
        return student, None
    if teacher is None:
        return student, None
    name, random_init, where = teacher
    return student, (name, where, encoder_config(name, where, random_init=random_init))


def _check_student(cfg: RunConfig, names):
    """The student as ``student`` describes it (layers kept, a random shape) can be built,
    from whole weights where it starts from the backbone's; its config and tokenizer, or
    None twice where an earlier stage writes the backbone."""
    s = cfg.student
    if _written_later(cfg, s.backbone):
        return None, None
    if s.init != "random":
        _whole_weights(cfg, s.backbone, "student.backbone")
    config = _student_config(cfg)
    check_max_length(config, cfg.task.max_length, "student")
    return config, _tokenizer(s.backbone, "student.backbone")


def _whole_weights(cfg: RunConfig, name: str, where: str):
    """The safetensors headers of a model a stage will read the weights of (a hub name's
    downloaded first): a truncated copy is one line now, and so is a classifier trained for
    another label count than the task's, which the stage refuses when it loads it, after the
    stages before it have run. Returns the tensor names they hold (None for a model an
    earlier stage writes)."""
    if not _here(cfg, name, where):
        return None
    folder = resolve_model(name, where)
    held = check_weights(folder, where)
    check_labels(read_model_config(folder, where), task_spec(cfg.task), folder, where)
    return held


def _trained_classifier(cfg: RunConfig, name: str, where: str, held: set[str]) -> None:
    """A model a stage scores, exports or distils predictions from has its classifier's
    weights (``held``: the names in its safetensors headers): a backbone named there is one
    line now, not when that stage loads it after the earlier stages have trained."""
    folder = resolve_model(name, where)
    require_trained(missing_head_weights(folder, encoder_config(name, where), where, held), folder, where,
                    task_spec(cfg.task))


def _here(cfg: RunConfig, name: str, where: str) -> bool:
    """A model a stage will read as it is now, not one an earlier stage writes: a folder, an
    offline alias or a hub name. A hub name is downloaded now, so that ``crild submit``, on a
    login node that can reach the hub, fills the cache that compute nodes without network
    read. A file given for a model folder is refused as the stage would refuse it."""
    if _written_later(cfg, name):
        return False
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        resolve_model(name, where, need_weights=False)  # raises: a file, not a model folder
    return True


def _student_config(cfg: RunConfig):
    s = cfg.student
    return encoder_config(s.backbone, "student", num_layers=s.num_layers if s.init == "truncated" else None,
                          random_init=s.random_init if s.init == "random" else None)


def _check_augment(cfg: RunConfig, names) -> None:
    """The word vectors as far as they show without reading them all, and the masked LM
    proposing words in the student's vocabulary; or one line (as the stage says it)."""
    a, s = cfg.stages.augment, cfg.student
    check_vectors(a.vectors.path, a.vectors.vocab)
    if not a.masked_lm or _written_later(cfg, s.backbone) or _written_later(cfg, a.masked_lm):
        return
    where = "stages.augment.masked_lm"
    if _here(cfg, a.masked_lm, where):
        names = check_weights(resolve_model(a.masked_lm, where), where)
        require_mlm_head(names, encoder_config(a.masked_lm, where), a.masked_lm, where)
    mlm = load_tokenizer(resolve_model(a.masked_lm, where, need_weights=False), where)
    student = load_tokenizer(resolve_model(s.backbone, "student.backbone", need_weights=False), "student.backbone")
    if mlm.get_vocab() != student.get_vocab():
        raise UserError(f"{where}: '{a.masked_lm}' has a different vocabulary from student.backbone '{s.backbone}'")


def _check_teacher(cfg: RunConfig, names) -> None:
    t = cfg.teacher
    if t.random_init is None:
        _whole_weights(cfg, t.model, "teacher.model")
    if _here(cfg, t.model, "teacher.model"):
        check_max_length(encoder_config(t.model, "teacher", random_init=t.random_init), cfg.task.max_length, "teacher")
        _tokenizer(t.model, "teacher.model")


def _check_listed_models(stage: str):
    """The check of a stage that reads the model folders ``stages.<stage>.models`` lists."""
    def check(cfg: RunConfig, names) -> None:
        for i, model in enumerate(getattr(cfg.stages, stage).models):
            where = f"stages.{stage}.models[{i}]"
            held = _whole_weights(cfg, model, where)
            if held is not None:
                check_max_length(encoder_config(model, where), cfg.task.max_length, model)
                _tokenizer(model, where)
                _trained_classifier(cfg, model, where, held)
    return check


def _tokenizer(name: str, where: str):
    """The tokenizer a stage will load from a model folder (a Trainer checkpoint saved
    without one has none), loaded now: one line before the first stage, not at the stage."""
    return load_tokenizer(resolve_model(name, where, need_weights=False), where)


def _check_evaluate(cfg: RunConfig, names) -> None:
    checked_eval_splits(cfg.task, task_spec(cfg.task), cfg.stages.evaluate.splits, cfg.source,
                        "stages.evaluate.splits")
    _check_listed_models("evaluate")(cfg, names)


def _check_export(cfg: RunConfig, names) -> None:
    onnxruntime()
    export = cfg.stages.export
    checked_eval_splits(cfg.task, task_spec(cfg.task), [export.split] if export.split else None, cfg.source,
                        "stages.export.split")
    _check_listed_models("export")(cfg, names)
    if export.models and export.quantize:  # the names the stage will give them (folders may come later)
        listed = model_names(export.models, export.models, "stages.export.models")
        teacher_names = teachers(cfg, dict(zip(listed, export.models)))
        check_int8_names(listed, [name for name in listed if name not in teacher_names])


# stage -> its checks beyond the DeepSpeed configs: (its configuration, the stages that run)
STAGE_CHECKS = {"teacher": _check_teacher, "augment": _check_augment, "distill": _check_distillation,
                "baseline": _check_student, "evaluate": _check_evaluate, "export": _check_export}


def _written_later(cfg: RunConfig, name: str) -> bool:
    """A folder under output_dir that is not there yet: an earlier stage may write it."""
    where = Path(name).expanduser().absolute()
    out = Path(cfg.output_dir).absolute()
    return not where.exists() and (where == out or out in where.parents)


def _teacher_source(cfg: RunConfig, teacher_trains: bool):
    """(model, random_init, key naming it) the distill stage's teacher is, or will be: the
    folder it names, the run's teacher as it is (complete for this configuration, or when no
    teacher stage runs before), or the settings the teacher stage trains it from. None when
    it is a folder under output_dir that is not there yet."""
    d = cfg.stages.distill
    if d.teacher_model:
        return None if _written_later(cfg, d.teacher_model) else (d.teacher_model, None,
                                                                   "stages.distill.teacher_model")
    folder = Path(cfg.output_dir).absolute() / "teacher"
    complete = is_complete(folder)
    if complete and (not teacher_trains or recorded_fingerprint(folder) in stage_fingerprints(cfg, "teacher")):
        return str(folder), None, "stages.distill.teacher_model"
    if teacher_trains:
        return cfg.teacher.model, cfg.teacher.random_init, "teacher.model"
    raise UserError(f"{folder}: no complete teacher; run the teacher stage first (crild run, or stage1_teacher.py) "
                    f"or set stages.distill.teacher_model")
