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
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.checkpointing import remove_checkpoints  # noqa: E402
from pipeline.config import RunConfig, settings_dict  # noqa: E402
from pipeline.data_sources import UNLABELLED, Examples, load_split  # noqa: E402
from pipeline.distill import DistillModule, DistillObjective  # noqa: E402
from pipeline.distributed import (DistInfo, barrier, decided_by_main, init_distributed, main_rank_first,  # noqa: E402
                                  seed_everything)
from pipeline.ds_config import build_ds_config, fill_zero_buckets, load_ds_json, precision_dtype, zero_stage  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.integrity import problems  # noqa: E402
from pipeline.evaluation import classifier_forward  # noqa: E402
from pipeline.models import build_classifier, load_tokenizer, quiet_libraries, resolve_model, save_model  # noqa: E402
from pipeline.objectives import PRESETS, TERMS, PhasePlan, layer_pairs, resolve_phases  # noqa: E402
from pipeline.outputs import BOOKKEEPING_FILES, MANIFEST, atomic_output, is_complete, verified, write_json  # noqa: E402
from pipeline.runner import stage_fingerprint  # noqa: E402
from pipeline.stage_common import (TaskData, consolidated_state_dict, dev_evaluator, evaluations,  # noqa: E402
                                   load_task_data, log, resume, run_dir, stage_hash, stage_main)
from pipeline.synthetic import apply_settings  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402
from pipeline.tb import Scalars  # noqa: E402
from pipeline.teacher_cache import cached_teacher_logits, teacher_fingerprint  # noqa: E402
from pipeline.tokenized import tokenize_cached  # noqa: E402
from pipeline.trainer import EXIT_PREEMPTED, StopRequest, decay_groups, make_plan, train_loop  # noqa: E402

STAGE = "distill"
PHASE_ONLY_FILES = (*BOOKKEEPING_FILES, "train_results.json")  # the final student writes its own


def teacher_folder(cfg: RunConfig) -> Path:
    dcfg = cfg.stages.distill
    if dcfg.teacher_model:
        return Path(resolve_model(dcfg.teacher_model, "stages.distill.teacher_model"))
    folder = run_dir(cfg) / "teacher"
    if not is_complete(folder):
        raise UserError(f"{folder}: no complete teacher; run the teacher stage first "
                        f"(crild run, or stage1_teacher.py) or set stages.distill.teacher_model")
    return verified(folder, "the teacher")


class FrozenTeacher:
    """The teacher: frozen, eval mode, no gradients. With ``teacher_deepspeed_config`` at
    ZeRO-3 its parameters are partitioned over the ranks (transformers' DeepSpeed
    integration builds it already partitioned), for teachers too large for one device."""

    def __init__(self, cfg: RunConfig, folder: Path, spec, dist: DistInfo):
        self.partitioned = False
        path = cfg.stages.distill.teacher_deepspeed_config
        if path is not None:
            import deepspeed
            from transformers.integrations import HfDeepSpeedConfig

            _, tcfg = load_ds_json(path, cfg.source)
            tcfg = {k: v for k, v in tcfg.items() if k not in ("optimizer", "scheduler")}
            fill_zero_buckets(tcfg, json.loads((folder / "config.json").read_text())["hidden_size"])
            tcfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                        train_batch_size=dist.world_size)
            if zero_stage(tcfg) == 3:
                hf_ds = HfDeepSpeedConfig(tcfg)  # while alive, from_pretrained builds partitioned models
                model = build_classifier(str(folder), spec, "stages.distill.teacher_model")
                engine, _, _, _ = deepspeed.initialize(model=model, config=tcfg)
                del hf_ds  # the student must not be partitioned: it trains under its own ZeRO stage
                self.model = engine.module.eval().requires_grad_(False)
                self.partitioned = True
                return
        self.model = build_classifier(str(folder), spec, "stages.distill.teacher_model")
        self.model.to(device=dist.device).eval().requires_grad_(False)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run in the student engine's precision (a partitioned teacher keeps its own)."""
        if not self.partitioned:
            self.model.to(dtype)


def build_student(cfg: RunConfig, spec, previous: Path | None):
    if previous is not None:
        return build_classifier(str(previous), spec, "student")
    s = cfg.student
    kwargs = {"max_length": cfg.task.max_length}
    if s.init == "truncated":
        return build_classifier(s.backbone, spec, "student", num_layers=s.num_layers, **kwargs)
    if s.init == "random":
        return build_classifier(s.backbone, spec, "student", random_init=s.random_init, **kwargs)
    return build_classifier(s.backbone, spec, "student", **kwargs)


def supplementary_data(cfg: RunConfig, tokenizer, n_target: int, regression: bool) -> datasets.Dataset | None:
    """Inputs of the supplementary datasets, ``ratio`` examples per target example each,
    drawn with the run's seed; labels are dropped (ILD does not use them)."""
    parts = []
    for i, sup in enumerate(cfg.stages.distill.supplementary):
        spec = get_task(sup.task.name)
        ex = apply_settings(load_split(sup.task, spec, "train"), sup.task, spec, cfg.seed)
        n = min(len(ex), max(1, int(round(sup.ratio * n_target))))
        idx = np.sort(np.random.default_rng([cfg.seed, 0x5355, i]).choice(len(ex), size=n, replace=False))
        ex = ex.select(idx)
        unlabelled = Examples(ex.text_a, ex.text_b, np.full(len(ex), UNLABELLED,
                                                             dtype=np.float32 if regression else np.int64),
                              ex.source, ex.ids)
        parts.append(tokenize_cached(unlabelled, tokenizer, cfg.task.max_length))
    return datasets.concatenate_datasets(parts) if parts else None


def phase_dataset(cfg: RunConfig, plan: PhasePlan, data: TaskData, tokenizer) -> datasets.Dataset:
    dcfg = cfg.stages.distill
    if plan.name in dcfg.augmented_phases:  # stage 2's output (originals included, as copy 0)
        from pipeline.stage2_augment import augmented_examples, verified_augmented

        folder = verified_augmented(run_dir(cfg) / "augmented")  # collective: outside main_rank_first
        with main_rank_first():
            return tokenize_cached(augmented_examples(folder), tokenizer, cfg.task.max_length)
    if plan.name == "kd" or not dcfg.supplementary:
        return data.train
    if plan.name == "ild_supplementary":
        with main_rank_first():
            return supplementary_data(cfg, tokenizer, len(data.train), data.spec.regression)
    if dcfg.supplementary_mode == "mixed":
        with main_rank_first():
            supp = supplementary_data(cfg, tokenizer, len(data.train), data.spec.regression)
        cols = ["input_ids", "token_type_ids", "length", "label", "example_id"]
        return datasets.concatenate_datasets([data.train.select_columns(cols),
                                              supp.cast(data.train.select_columns(cols).features)])
    return data.train


def check_models(teacher, student, pairs, terms: dict, relation_heads: int) -> None:
    for name in terms:
        if TERMS[name].same_heads and teacher.config.num_attention_heads != student.config.num_attention_heads:
            raise UserError(f"stages.distill: term '{name}' needs equal attention-head counts, teacher has "
                            f"{teacher.config.num_attention_heads}, student {student.config.num_attention_heads}")
    for who, model in (("teacher", teacher), ("student", student)):
        if model.config.hidden_size % relation_heads:
            raise UserError(f"stages.distill.relation_heads: {relation_heads} relation heads do not divide the "
                            f"{who}'s hidden size {model.config.hidden_size}")


def phase_done(folder: Path, cfg: RunConfig) -> bool:
    """Complete for this configuration, with intact files (else the phase is redone)."""
    if not is_complete(folder):
        return False
    same = json.loads((folder / MANIFEST).read_text()).get("fingerprint") == stage_fingerprint(cfg, STAGE)
    return same and decided_by_main(lambda: not problems(folder))  # rank 0 hashes, the others are told


def run_phase(cfg: RunConfig, plan: PhasePlan, index: int, dist: DistInfo, data: TaskData, tokenizer,
              frozen: FrozenTeacher | None, teacher_dir: Path | None, previous: Path | None, stop: StopRequest) -> int:
    import deepspeed

    teacher = frozen.model if frozen is not None else None
    dcfg = cfg.stages.distill
    out = run_dir(cfg)
    train_cfg = getattr(dcfg, plan.name)
    seed_everything(cfg.seed + index)
    spec = data.spec
    student = build_student(cfg, spec, previous)
    n_s = student.config.num_hidden_layers
    uses_layers = any(TERMS[t].kinds for t in plan.terms) or plan.consistency > 0
    pairs, relation_heads = [], 1
    if teacher is not None and uses_layers:
        embeddings = any(TERMS[t].embeddings for t in plan.terms)
        pairs = layer_pairs(dcfg, n_s, teacher.config.num_hidden_layers, embeddings, PRESETS[dcfg.preset].layer_map)
        relation_heads = dcfg.relation_heads or teacher.config.num_attention_heads
        check_models(teacher, student, pairs, plan.terms, relation_heads)
    elif plan.consistency > 0:
        relation_heads = dcfg.relation_heads or student.config.num_attention_heads
    projected = sorted({s for s, _ in pairs}) if any(t in ("hidden_mse", "pkd") for t in plan.terms) else []
    module = DistillModule(student, projected, teacher.config.hidden_size if teacher is not None else 0)
    ds = phase_dataset(cfg, plan, data, tokenizer)
    plan_loop = make_plan(len(ds), train_cfg, dist.world_size)
    ds_cfg = build_ds_config(train_cfg.deepspeed_config or cfg.deepspeed_config, train_cfg, dist.world_size,
                             plan_loop.total_optimizer_steps, cfg.source, f"distill.{plan.name}",
                             hidden_size=student.config.hidden_size)
    if frozen is not None:
        frozen.set_dtype(precision_dtype(ds_cfg))
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=decay_groups(module, train_cfg.weight_decay),
                                           config=ds_cfg)
    cached = None
    terms_need_internals = any(TERMS[t].kinds for t in plan.terms)
    if teacher is not None and any(TERMS[t].needs_teacher_logits for t in plan.terms) and not plan.mixup \
            and not terms_need_internals:
        cached = cached_teacher_logits(classifier_forward(teacher, dist.device), teacher_fingerprint(teacher_dir),
                                       ds, data.collate, train_cfg.eval_batch_size, dist)
    objective = DistillObjective(
        plan, module, teacher, pairs, relation_heads, dcfg.temperature, spec.regression, dist.device, cfg.seed,
        plan_loop.total_micro_steps, alpha=dcfg.mixup.alpha, consistency_target=dcfg.consistency.target,
        ema_decay=dcfg.consistency.ema_decay, consistency_distance=dcfg.consistency.distance, teacher_logits=cached)
    chash = stage_hash(cfg, STAGE, {"phase": plan.name, "student": settings_dict(cfg.student), "ds": ds_cfg,
                                    "teacher": teacher_fingerprint(teacher_dir) if teacher_dir else None})
    ckpts, state = resume(engine, out / "checkpoints" / dcfg.output / plan.name, dist, chash,
                          train_cfg.keep_checkpoints, stage_fingerprint(cfg, STAGE), plan.name,
                          plan_loop.total_micro_steps, extra=(objective.save_extra, objective.load_extra))
    log(dist, f"{plan.name}: {len(ds)} examples, {plan_loop.total_optimizer_steps} optimizer steps, terms "
              f"{plan.terms}, mixup {plan.mixup}, consistency {plan.consistency}, layers {pairs}")
    scalars = Scalars(out / "tensorboard" / dcfg.output, dist.is_main)
    main_split = data.main_split
    # the classifier is not trained during ILD: nothing to score there
    evaluate = (lambda: {}) if plan.is_ild else dev_evaluator(engine, data, train_cfg, dist, cfg.seed)

    result = train_loop(engine=engine, dist=dist, train_ds=ds, collate=data.collate, cfg=train_cfg, seed=cfg.seed,
                        plan=plan_loop, loss_fn=objective, evaluate=evaluate,
                        main_metric=f"{main_split}/{spec.main_metric}", ckpts=ckpts, scalars=scalars,
                        prefix=plan.name, stop=stop, state=state)
    scalars.close()
    if not result["finished"]:
        log(dist, f"{plan.name}: stopped at micro-step {result['micro_step']}; checkpoint saved, run again to resume")
        return EXIT_PREEMPTED
    full = consolidated_state_dict(engine, ds_cfg)
    if dist.is_main:
        student_sd = {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")}
        with atomic_output(phase_folder(cfg, plan.name), cfg, STAGE) as tmp:
            save_model(student, tokenizer, tmp, student_sd)
            write_json(tmp / "train_results.json", {
                "phase": plan.name, "terms": plan.terms, "mixup": plan.mixup, "consistency": plan.consistency,
                "layer_pairs": pairs, "examples": len(ds), "optimizer_steps": plan_loop.total_optimizer_steps,
                "teacher_forwards": objective.teacher_forwards, **evaluations(result)})
    barrier()
    return 0


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (the final student is the last phase's:
    no second copy of the weights on disk), a copy otherwise. Only files that are never written
    again may be linked: an output folder is replaced whole, its bookkeeping written anew."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def phase_folder(cfg: RunConfig, phase: str) -> Path:
    return run_dir(cfg) / f"{cfg.stages.distill.output}.phases" / phase


def run(cfg: RunConfig, stop: StopRequest | None = None) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    dcfg = cfg.stages.distill
    stop = stop or StopRequest()
    plans = resolve_phases(dcfg)
    needs_teacher = PRESETS[dcfg.preset].needs_teacher or any(
        TERMS[t].needs_teacher_logits or TERMS[t].kinds for p in plans for t in p.terms)
    tokenizer = load_tokenizer(resolve_model(cfg.student.backbone, "student.backbone",
                                             need_weights=cfg.student.init != "random"), "student.backbone")
    teacher_dir = teacher_folder(cfg) if needs_teacher else None
    spec = get_task(cfg.task.name)
    frozen = None
    if teacher_dir is not None:
        if load_tokenizer(str(teacher_dir), "teacher").get_vocab() != tokenizer.get_vocab():
            raise UserError(f"student.backbone '{cfg.student.backbone}' and teacher '{teacher_dir}' have different "
                            f"vocabularies; distillation needs the same tokenizer")
        frozen = FrozenTeacher(cfg, teacher_dir, spec, dist)
    data = load_task_data(cfg, tokenizer)
    previous = None
    for index, plan in enumerate(plans):
        folder = phase_folder(cfg, plan.name)
        if phase_done(folder, cfg):
            log(dist, f"{plan.name}: complete, skipped ({folder})")
        else:
            code = run_phase(cfg, plan, index, dist, data, tokenizer, frozen, teacher_dir, previous, stop)
            if code:
                return code
        barrier()  # every rank is past the phase before its checkpoints go
        remove_checkpoints(run_dir(cfg) / "checkpoints" / dcfg.output / plan.name, dist.is_main)
        previous = folder
    if dist.is_main:
        with atomic_output(run_dir(cfg) / dcfg.output, cfg, STAGE) as tmp:
            for path in previous.iterdir():  # the last phase's model and tokenizer files
                if path.is_file() and path.name not in PHASE_ONLY_FILES:
                    link_or_copy(path, tmp / path.name)
            write_json(tmp / "train_results.json", {
                "preset": dcfg.preset, "phases": {p.name: json.loads((phase_folder(cfg, p.name) /
                                                                      "train_results.json").read_text())
                                                  for p in plans}})
        log(dist, f"{STAGE}: saved {run_dir(cfg) / dcfg.output}")
    barrier()
    remove_checkpoints(run_dir(cfg) / "checkpoints" / dcfg.output, dist.is_main)
    return 0


if __name__ == "__main__":
    stage_main(run, "Distil the teacher into the student (ILD phases and prediction-layer KD).")
