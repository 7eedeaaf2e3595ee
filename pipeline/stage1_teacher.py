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

from pipeline.checkpointing import remove_checkpoints  # noqa: E402
from pipeline.config import RunConfig, settings_dict  # noqa: E402
from pipeline.distributed import barrier, init_distributed, seed_everything  # noqa: E402
from pipeline.ds_config import build_ds_config  # noqa: E402
from pipeline.evaluation import model_inputs  # noqa: E402
from pipeline.losses import task_loss  # noqa: E402
from pipeline.models import build_classifier, load_tokenizer, quiet_libraries, resolve_model, save_model  # noqa: E402
from pipeline.outputs import atomic_output, write_json  # noqa: E402
from pipeline.runner import stage_fingerprint  # noqa: E402
from pipeline.stage_common import (consolidated_state_dict, dev_evaluator, evaluations, load_task_data,  # noqa: E402
                                   log, resume, run_dir, stage_hash, stage_main)
from pipeline.tb import Scalars  # noqa: E402
from pipeline.trainer import EXIT_PREEMPTED, StopRequest, decay_groups, make_plan, train_loop  # noqa: E402

STAGE = "teacher"


def run(cfg: RunConfig, stop: StopRequest | None = None) -> int:
    quiet_libraries()
    dist = init_distributed()
    import deepspeed
    seed_everything(cfg.seed)
    train_cfg = cfg.stages.teacher
    out = run_dir(cfg)
    model_path = resolve_model(cfg.teacher.model, "teacher.model", need_weights=cfg.teacher.random_init is None)
    tokenizer = load_tokenizer(model_path, "teacher.model")
    data = load_task_data(cfg, tokenizer)
    spec = data.spec
    model = build_classifier(cfg.teacher.model, spec, "teacher", random_init=cfg.teacher.random_init,
                             max_length=cfg.task.max_length)
    plan = make_plan(len(data.train), train_cfg, dist.world_size)
    ds_cfg = build_ds_config(train_cfg.deepspeed_config or cfg.deepspeed_config, train_cfg, dist.world_size,
                             plan.total_optimizer_steps, cfg.source, STAGE, hidden_size=model.config.hidden_size)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=decay_groups(model, train_cfg.weight_decay),
                                           config=ds_cfg)
    chash = stage_hash(cfg, STAGE, {"teacher": settings_dict(cfg.teacher), "ds": ds_cfg})
    ckpts, state = resume(engine, out / "checkpoints" / STAGE, dist, chash, train_cfg.keep_checkpoints,
                          stage_fingerprint(cfg, STAGE), STAGE, plan.total_micro_steps)
    log(dist, f"{STAGE}: {len(data.train)} training examples, {plan.total_optimizer_steps} optimizer steps, "
              f"{dist.world_size} rank(s), ZeRO-{ds_cfg.get('zero_optimization', {}).get('stage', 0)}")
    scalars = Scalars(out / "tensorboard" / STAGE, dist.is_main)
    main_split = data.main_split

    def loss_fn(engine_, batch, micro_step):
        logits = engine_(**model_inputs(batch, dist.device)).logits
        return task_loss(logits, batch["labels"].to(dist.device), spec.regression), {}

    result = train_loop(engine=engine, dist=dist, train_ds=data.train, collate=data.collate, cfg=train_cfg,
                        seed=cfg.seed, plan=plan, loss_fn=loss_fn,
                        evaluate=dev_evaluator(engine, data, train_cfg, dist, cfg.seed),
                        main_metric=f"{main_split}/{spec.main_metric}", ckpts=ckpts, scalars=scalars,
                        prefix=STAGE, stop=stop or StopRequest(), state=state)
    scalars.close()
    if not result["finished"]:
        log(dist, f"{STAGE}: stopped at micro-step {result['micro_step']}; checkpoint saved, run again to resume")
        return EXIT_PREEMPTED
    state_dict = consolidated_state_dict(engine, ds_cfg)
    if dist.is_main:
        with atomic_output(out / STAGE, cfg, STAGE) as tmp:
            save_model(model, tokenizer, tmp, state_dict)
            write_json(tmp / "train_results.json", {
                "train_examples": len(data.train), "optimizer_steps": plan.total_optimizer_steps,
                **evaluations(result)})
        log(dist, f"{STAGE}: saved {out / STAGE}")
    barrier()
    remove_checkpoints(out / "checkpoints" / STAGE, dist.is_main)
    return 0


if __name__ == "__main__":
    stage_main(run, "Fine-tune the teacher on the target task.")
