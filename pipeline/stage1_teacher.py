"""Stage 1: fine-tune the teacher on the target task.

    deepspeed pipeline/stage1_teacher.py --config jobs/demo.yaml [section.key=value ...]
    python pipeline/stage1_teacher.py --config jobs/demo.yaml

Output: ``<output_dir>/teacher``, a save_pretrained folder (safetensors + tokenizer) with
config.resolved.yaml, train_results.json and a manifest; TensorBoard under
``<output_dir>/tensorboard/teacher``; checkpoints under ``<output_dir>/checkpoints/teacher``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipeline.config import RunConfig
from pipeline.data.task_data import load_task_data
from pipeline.distill.losses import task_loss
from pipeline.errors import EXIT_PREEMPTED
from pipeline.evaluation.periodic import dev_evaluator, evaluations
from pipeline.evaluation.predict import model_inputs
from pipeline.export.model_card import CARD, trained_card
from pipeline.export.provenance import TRAIN_RESULTS
from pipeline.models.compiling import compile_layers
from pipeline.models.loading import build_classifier, load_tokenizer, quiet_libraries, resolve_model, save_model
from pipeline.outputs.atomic import atomic_output, write_json
from pipeline.outputs.trust import trust_note
from pipeline.runtime.distributed import barrier, init_distributed, seed_everything, set_tf32
from pipeline.runtime.progress import counted, log
from pipeline.schema.hashing import settings_dict, to_dict
from pipeline.stage_cli import stage_main
from pipeline.stages import stage_fingerprint
from pipeline.training.checkpoint_folders import claim_checkpoints, remove_checkpoints
from pipeline.training.checkpointing import Checkpoints, resume, trajectory_keys
from pipeline.training.ds_config import build_ds_config, zero_stage
from pipeline.training.engine import build_engine, consolidated_state_dict
from pipeline.training.scalars import Scalars, start_afresh
from pipeline.training.schedule import make_schedule
from pipeline.training.stop import StopRequest
from pipeline.training.trainer import train_loop

STAGE = "teacher"


def run(cfg: RunConfig, stop: StopRequest | None = None) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    set_tf32(cfg.tf32)
    train_cfg = cfg.stages.teacher
    out = Path(cfg.output_dir)
    fingerprint = stage_fingerprint(cfg, STAGE)
    claim_checkpoints(out / "checkpoints" / STAGE)
    model_path = resolve_model(cfg.teacher.model, "teacher.model", need_weights=cfg.teacher.random_init is None)
    note = trust_note(model_path, "teacher.model")
    tokenizer = load_tokenizer(model_path, "teacher.model")
    data = load_task_data(cfg, tokenizer)
    model = build_classifier(cfg.teacher.model, data.spec, "teacher", random_init=cfg.teacher.random_init,
                             max_length=cfg.task.max_length)
    schedule = make_schedule(len(data.train), train_cfg, dist.world_size, "stages.teacher")
    ds_cfg = build_ds_config(train_cfg.deepspeed_config or cfg.deepspeed_config, train_cfg, dist.world_size,
                             schedule.total_optimizer_steps, cfg.source, STAGE, hidden_size=model.config.hidden_size)
    if cfg.compile:
        compile_layers(model, ds_cfg, f"{cfg.source}: compile")
    engine = build_engine(model, train_cfg.weight_decay, ds_cfg)
    trajectories = trajectory_keys(cfg, STAGE, {"teacher": settings_dict(cfg.teacher), "ds": ds_cfg})
    ckpts = Checkpoints(out / "checkpoints" / STAGE, dist, trajectories, train_cfg.keep_checkpoints, fingerprint)
    state = resume(engine, ckpts, STAGE, schedule.total_micro_steps)
    ckpts.require_room(engine, model)
    if not state:
        start_afresh(out / "tensorboard" / STAGE, STAGE, dist)
    for line in ([note] if note else []) + data.notes:
        log(dist, line)
    log(dist, f"{STAGE}: {counted(len(data.train), 'training example')}, "
              f"{counted(schedule.total_optimizer_steps, 'optimizer step')}, "
              f"{counted(dist.world_size, 'rank')}, ZeRO-{zero_stage(ds_cfg)}")

    def loss_fn(engine_, batch, micro_step):
        logits = engine_(**model_inputs(batch, dist.device, model)).logits
        return task_loss(logits, batch["labels"].to(dist.device, non_blocking=True),
                         data.spec.regression), {}

    with Scalars(out / "tensorboard" / STAGE, dist.is_main) as scalars:
        result = train_loop(engine=engine, dist=dist, train_ds=data.train, collate=data.collate, cfg=train_cfg,
                            seed=cfg.seed, schedule=schedule, loss_fn=loss_fn,
                            evaluate=dev_evaluator(engine, data, train_cfg, dist, cfg.seed),
                            main_metric=f"{data.main_split}/{data.spec.main_metric}", ckpts=ckpts,
                            scalars=scalars, prefix=STAGE, stop=stop or StopRequest(output_dir=cfg.output_dir),
                            state=state)
    if not result["finished"]:
        log(dist, f"{STAGE}: stopped at micro-step {result['micro_step']}; checkpoint saved, run again to resume")
        return EXIT_PREEMPTED
    state_dict = consolidated_state_dict(engine, ds_cfg)
    if dist.is_main:
        with atomic_output(out / STAGE, cfg, STAGE, fingerprint) as tmp:
            save_model(model, tokenizer, tmp, state_dict, cfg.task.max_length)
            results = {"train_examples": len(data.train), "optimizer_steps": schedule.total_optimizer_steps,
                       **evaluations(result)}
            write_json(tmp / TRAIN_RESULTS, results)
            (tmp / CARD).write_text(trained_card(tmp, STAGE, STAGE, to_dict(cfg), results, data.spec), encoding="utf-8")
        log(dist, f"{STAGE}: saved {out / STAGE}")
    barrier()
    remove_checkpoints(out / "checkpoints" / STAGE, dist.is_main)
    return 0


if __name__ == "__main__":
    stage_main(run, STAGE)
