"""One distillation phase, trained: the data it reads, the student it starts from, the
engine, the objective, resumable training and its output folder
(``<output_dir>/<output>.phases/<phase>``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets

from pipeline.data.augmented import augmented_examples, verified_augmented
from pipeline.data.batching import Collator
from pipeline.data.supplementary import supplementary_data
from pipeline.data.task_data import TaskData
from pipeline.data.tokenized import tokenize_cached
from pipeline.distill.layers import LayerLayout, layer_layout
from pipeline.distill.objective import DistillObjective
from pipeline.distill.plan import phase_recipe, phase_source
from pipeline.distill.presets import Phase, phase_settings
from pipeline.distill.student import DistillModule, build_student, size_note
from pipeline.distill.teacher import FrozenTeacher, cached_teacher_logits, teacher_fingerprint
from pipeline.distill.terms import TERMS
from pipeline.errors import EXIT_PREEMPTED
from pipeline.evaluation.periodic import dev_evaluator, evaluations
from pipeline.evaluation.predict import classifier_forward
from pipeline.models.compiling import compile_layers
from pipeline.models.loading import save_model
from pipeline.outputs.atomic import atomic_output, write_json
from pipeline.outputs.integrity import problems
from pipeline.outputs.manifest import is_complete, recorded_fingerprint
from pipeline.runtime.distributed import DistInfo, barrier, main_rank_first, seed_everything
from pipeline.runtime.progress import counted, log
from pipeline.runtime.rank_zero import decided_by_main
from pipeline.schema.hashing import settings_dict
from pipeline.training.checkpointing import Checkpoints, resume, trajectory_keys
from pipeline.training.ds_config import build_ds_config, precision_dtype
from pipeline.training.engine import build_engine, consolidated_state_dict
from pipeline.training.scalars import Scalars, start_afresh
from pipeline.training.schedule import make_schedule
from pipeline.training.stop import StopRequest
from pipeline.training.trainer import train_loop

STAGE = "distill"
TOKENIZED_COLUMNS = ["input_ids", "token_type_ids", "length", "label", "example_id"]


@dataclass
class DistillRun:
    """What every phase of one distillation stage shares."""

    cfg: object  # RunConfig
    dist: DistInfo
    data: TaskData
    tokenizer: object
    teacher: Optional[FrozenTeacher]
    fingerprints: tuple[str, ...]  # the stage's (stage_fingerprints): the first is recorded, any is current
    # each phase's (phase_fingerprints), which its folder and checkpoints record: the first is recorded, any is current
    phase_fingerprints: dict
    stop: StopRequest
    teacher_tokenizer: object = None  # set when it tokenizes differently from the student (prediction-layer KD only)
    notes: list = field(default_factory=list)  # trust notes of the folders read, logged when training starts
    fresh: bool = False  # nothing of an earlier attempt to resume: its events go aside once every check has passed

    @property
    def fingerprint(self) -> str:
        """The stage's fingerprint, recorded in the student it publishes."""
        return self.fingerprints[0]

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def phase_folder(self, phase: str) -> Path:
        return self.out / f"{self.cfg.stages.distill.output}.phases" / phase

    def checkpoint_folder(self, phase: str = "") -> Path:
        return self.out / "checkpoints" / self.cfg.stages.distill.output / phase


def phase_line(phase, examples: int, steps: int, pairs: list) -> str:
    """What a phase is about to train, in one line: its size, then ``phase_recipe``."""
    return (f"{phase.name}: {counted(examples, 'example')}, {counted(steps, 'optimizer step')}; "
            f"{phase_recipe(phase, pairs)}")


def phase_dataset(run: DistillRun, phase: Phase) -> datasets.Dataset:
    """The examples ``phase`` trains on, tokenized (see ``phase_source``)."""
    cfg, data, tokenizer = run.cfg, run.data, run.tokenizer
    source = phase_source(cfg.stages.distill, phase.name)
    if source == "augmented":
        folder = verified_augmented(run.out / "augmented")  # collective: outside main_rank_first
        with main_rank_first():
            return tokenize_cached(augmented_examples(folder), tokenizer, cfg.task.max_length)
    if source == "train":
        return data.train
    with main_rank_first():
        supp = supplementary_data(cfg, tokenizer, data.train_examples, data.spec.regression)
    if source == "supplementary":
        return supp
    train = data.train.select_columns(TOKENIZED_COLUMNS)
    return datasets.concatenate_datasets([train, supp.cast(train.features)])


def phase_done(run: DistillRun, phase: str) -> bool:
    """Complete for this configuration, with intact files (else the phase is redone)."""
    folder = run.phase_folder(phase)
    if not is_complete(folder) or recorded_fingerprint(folder) not in run.phase_fingerprints[phase]:
        return False
    return decided_by_main(lambda: not problems(folder))  # rank 0 hashes, the others are told


def _module(run: DistillRun, phase: Phase, previous: Optional[Path]) -> tuple[DistillModule, LayerLayout]:
    student = build_student(run.cfg, run.data.spec, previous)
    teacher_config = run.teacher.model.config if run.teacher is not None else None
    layout = layer_layout(run.cfg.stages.distill, phase, student.config, teacher_config)
    projected = sorted({s for s, _ in layout.pairs}) if any(TERMS[t].projects for t in phase.terms) else []
    teacher_width = teacher_config.hidden_size if teacher_config is not None else 0
    return DistillModule(student, projected, teacher_width), layout


def _cached_logits(run: DistillRun, phase: Phase, ds, batch_size: int):
    """The teacher's logits on every row of ``ds`` when the phase needs only those (no
    mixup, no layers). A teacher with its own tokenizer reads the same examples in its own
    tokens; rows stay in order, so the student's batch finds them by row."""
    terms = [TERMS[t] for t in phase.terms]
    if run.teacher is None or phase.mixup or any(t.kinds for t in terms) \
            or not any(t.needs_teacher_logits for t in terms):
        return None
    collate = run.data.collate
    if run.teacher_tokenizer is not None:
        examples = augmented_examples(verified_augmented(run.out / "augmented")) \
            if phase.name in run.cfg.stages.distill.augmented_phases else run.data.train_examples
        with main_rank_first():
            ds = tokenize_cached(examples, run.teacher_tokenizer, run.cfg.task.max_length)
        collate = Collator(run.teacher_tokenizer.pad_token_id, run.data.spec.regression)
    return cached_teacher_logits(classifier_forward(run.teacher.model, run.dist.device),
                                 teacher_fingerprint(run.teacher.folder), ds, collate, batch_size, run.dist,
                                 run.teacher.dtype, inference=not run.teacher.partitioned)


def train_phase(run: DistillRun, phase: Phase, index: int, previous: Optional[Path]) -> int:
    """Train ``phase`` (resuming from its checkpoint) and write its student; 0, or
    EXIT_PREEMPTED when stopped on request after a checkpoint."""
    cfg, dist, data = run.cfg, run.dist, run.data
    train_cfg = getattr(cfg.stages.distill, phase.name)
    seed_everything(cfg.seed + index)
    module, layout = _module(run, phase, previous)
    size = size_note(module.student, run.teacher.model if run.teacher else None) if previous is None else None
    run.notes += [size] if size else []  # said of the student as student.* builds it, before its first phase
    ds = phase_dataset(run, phase)
    schedule = make_schedule(len(ds), train_cfg, dist.world_size, f"stages.distill.{phase.name}")
    ds_cfg = build_ds_config(train_cfg.deepspeed_config or cfg.deepspeed_config, train_cfg, dist.world_size,
                             schedule.total_optimizer_steps, cfg.source, f"distill.{phase.name}",
                             hidden_size=module.student.config.hidden_size)
    if run.teacher is not None:
        run.teacher.set_dtype(precision_dtype(ds_cfg), cfg.stages.distill.teacher_precision)
    if cfg.compile:
        compile_layers(module.student, ds_cfg, f"{cfg.source}: compile")
        if run.teacher is not None:
            run.teacher.compile()
    engine = build_engine(module, train_cfg.weight_decay, ds_cfg)
    objective = DistillObjective(cfg, phase, module, run.teacher.model if run.teacher else None, layout,
                                 dist.device, schedule.total_micro_steps,
                                 teacher_logits=_cached_logits(run, phase, ds, train_cfg.eval_batch_size))
    extra = {"phase": phase.name, "student": settings_dict(cfg.student), "ds": ds_cfg,
             "teacher": teacher_fingerprint(run.teacher.folder) if run.teacher else None}
    # what the phases up to this one read; a checkpoint that recorded the whole stage's settings resumes too
    trajectories = tuple(dict.fromkeys(trajectory_keys(
        cfg, STAGE, extra, lambda settings: phase_settings(cfg.stages.distill, settings, phase.name))
        + trajectory_keys(cfg, STAGE, extra)))
    ckpts = Checkpoints(run.checkpoint_folder(phase.name), dist, trajectories, train_cfg.keep_checkpoints,
                        run.phase_fingerprints[phase.name][0], extra=(objective.save_extra, objective.load_extra))
    state = resume(engine, ckpts, phase.name, schedule.total_micro_steps)
    ckpts.require_room(engine, module.student)
    events = run.out / "tensorboard" / cfg.stages.distill.output
    if run.fresh:  # every check has passed: a refused start leaves the earlier attempt's curves where they were
        start_afresh(events, cfg.stage or STAGE, dist)  # the baseline runs here too
        run.fresh = False
    elif not state:  # this phase afresh, after phases kept: its own earlier curves go aside
        start_afresh(events, phase.name, dist, phase.name)
    while run.notes:  # say what was read, once
        log(dist, run.notes.pop(0))
    log(dist, phase_line(phase, len(ds), schedule.total_optimizer_steps, layout.pairs))
    # the classifier is not trained during ILD: nothing to score there
    evaluate = (lambda: {}) if phase.is_ild else dev_evaluator(engine, data, train_cfg, dist, cfg.seed)
    with Scalars(events, dist.is_main, phase.name) as scalars:
        result = train_loop(engine=engine, dist=dist, train_ds=ds, collate=data.collate, cfg=train_cfg,
                            seed=cfg.seed, schedule=schedule, loss_fn=objective, evaluate=evaluate,
                            main_metric=f"{data.main_split}/{data.spec.main_metric}", ckpts=ckpts, scalars=scalars,
                            prefix=phase.name, stop=run.stop, state=state)
    if not result["finished"]:
        log(dist, f"{phase.name}: stopped at micro-step {result['micro_step']}; checkpoint saved, run again to resume")
        return EXIT_PREEMPTED
    full = consolidated_state_dict(engine, ds_cfg)
    if dist.is_main:
        student_sd = {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")}
        with atomic_output(run.phase_folder(phase.name), cfg, STAGE, run.phase_fingerprints[phase.name][0]) as tmp:
            save_model(module.student, run.tokenizer, tmp, student_sd, cfg.task.max_length)
            write_json(tmp / "train_results.json", {
                "phase": phase.name, "terms": phase.terms, "mixup": phase.mixup, "consistency": phase.consistency,
                "layer_pairs": layout.pairs, "examples": len(ds), "optimizer_steps": schedule.total_optimizer_steps,
                "teacher_forwards": objective.teacher_forwards, **evaluations(result)})
    barrier()
    return 0
