"""Stage 3: distil the teacher into the student, phase by phase.

    deepspeed pipeline/stage3_distill.py --config jobs/demo.yaml [section.key=value ...]

Phases (from ``stages.distill.preset``, or ``stages.distill.phases``):
  ild_supplementary  intermediate-layer distillation on other datasets' inputs (labels unused)
  ild                intermediate-layer distillation on the target task (CR-ILD or a baseline)
  kd                 prediction-layer distillation (teacher logits computed once, cached)

Each phase's student is written to ``<output_dir>/<output>.phases/<phase>`` when complete, so a
rerun skips finished phases and resumes the interrupted one from its checkpoint. The final
student is ``<output_dir>/<output>`` (default ``student``), a save_pretrained folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipeline.config import RunConfig
from pipeline.data.augmented import require_augmented
from pipeline.data.task_data import load_task_data
from pipeline.data.tasks import task_spec
from pipeline.distill.phase import STAGE, DistillRun, phase_done, train_phase
from pipeline.distill.plan import unused_line
from pipeline.distill.presets import needs_teacher, reads_teacher_logits, resolve_phases
from pipeline.distill.teacher import FrozenTeacher, teacher_folder, tokenize_alike
from pipeline.export.model_card import CARD, trained_card
from pipeline.export.provenance import TRAIN_RESULTS
from pipeline.models.loading import load_tokenizer, quiet_libraries, resolve_model
from pipeline.outputs.atomic import BOOKKEEPING_FILES, atomic_output, link_or_copy, write_json
from pipeline.outputs.trust import trust_note
from pipeline.runtime.distributed import barrier, init_distributed, seed_everything, set_tf32
from pipeline.runtime.progress import log
from pipeline.schema.hashing import to_dict
from pipeline.stage_cli import stage_main
from pipeline.stages import forced, phase_fingerprints, stage_fingerprints
from pipeline.training.checkpoint_folders import claim_checkpoints, has_checkpoints, remove_checkpoints
from pipeline.training.stop import StopRequest

PHASE_ONLY_FILES = (*BOOKKEEPING_FILES, "train_results.json")  # the final student writes its own


def frozen_teacher(cfg: RunConfig, tokenizer, dist):
    """(teacher, its tokenizer when it tokenizes differently from the student's, its trust
    note), when any phase needs a teacher. Tokenizing alike is decided from the tokenizers
    themselves (vocabulary, special tokens, normalisation), never from model names; a
    teacher that tokenizes differently serves prediction-layer terms only."""
    distill_cfg = cfg.stages.distill
    phases = resolve_phases(distill_cfg)
    if not needs_teacher(distill_cfg, phases):
        return None, None, None
    folder, note = teacher_folder(cfg)
    teacher_tokenizer = load_tokenizer(str(folder), "stages.distill.teacher_model")
    if tokenize_alike(distill_cfg, phases, teacher_tokenizer, tokenizer, str(folder), cfg.student.backbone):
        teacher_tokenizer = None
    return FrozenTeacher(cfg, folder, task_spec(cfg.task), dist, reads_teacher_logits(phases)), teacher_tokenizer, note


def publish_student(run: DistillRun, phases, last: Path) -> None:
    """The final student: the last phase's model and tokenizer files (hard links), and every
    phase's training results."""
    distill_cfg = run.cfg.stages.distill
    with atomic_output(run.out / distill_cfg.output, run.cfg, STAGE, run.fingerprint) as tmp:
        for path in last.iterdir():
            if path.is_file() and path.name not in PHASE_ONLY_FILES:
                link_or_copy(path, tmp / path.name)
        results = {"preset": distill_cfg.preset,
                   "phases": {p.name: json.loads((run.phase_folder(p.name) / TRAIN_RESULTS).read_text())
                              for p in phases}}
        write_json(tmp / TRAIN_RESULTS, results)
        (tmp / CARD).write_text(trained_card(tmp, distill_cfg.output, STAGE, to_dict(run.cfg), results,
                                             run.data.spec), encoding="utf-8")


def run(cfg: RunConfig, stop: StopRequest | None = None) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    set_tf32(cfg.tf32)
    phases = resolve_phases(cfg.stages.distill)
    if cfg.stages.distill.augmented_phases:  # phases that run (the schema checks)
        require_augmented(Path(cfg.output_dir) / "augmented")
    backbone = resolve_model(cfg.student.backbone, "student.backbone", need_weights=cfg.student.init != "random")
    notes = [trust_note(backbone, "student.backbone")]
    tokenizer = load_tokenizer(backbone, "student.backbone")
    teacher, teacher_tokenizer, teacher_note = frozen_teacher(cfg, tokenizer, dist)
    data = load_task_data(cfg, tokenizer)
    distill = DistillRun(cfg, dist, data, tokenizer, teacher, stage_fingerprints(cfg, STAGE),
                         {phase.name: phase_fingerprints(cfg, phase.name) for phase in phases},
                         stop or StopRequest(output_dir=cfg.output_dir), teacher_tokenizer=teacher_tokenizer,
                         notes=[n for n in (*notes, teacher_note, *data.notes, unused_line(cfg)) if n])
    claim_checkpoints(distill.checkpoint_folder())
    # collective: every rank asks; under crild run --force a complete phase is redone too
    done = {phase.name: phase_done(distill, phase.name) and not forced() for phase in phases}
    distill.fresh = not any(done.values()) and not has_checkpoints(distill.checkpoint_folder())
    previous = None
    for index, phase in enumerate(phases):
        folder = distill.phase_folder(phase.name)
        if done[phase.name]:
            log(dist, f"{phase.name}: complete for this configuration, kept ({folder})")
        else:
            code = train_phase(distill, phase, index, previous)
            if code:
                return code
        barrier()  # every rank is past the phase before its checkpoints go
        remove_checkpoints(distill.checkpoint_folder(phase.name), dist.is_main)
        previous = folder
    if dist.is_main:
        publish_student(distill, phases, previous)
        log(dist, f"{cfg.stage or STAGE}: saved {distill.out / cfg.stages.distill.output}")
    barrier()
    remove_checkpoints(distill.checkpoint_folder(), dist.is_main)
    return 0


if __name__ == "__main__":
    stage_main(run, STAGE)
