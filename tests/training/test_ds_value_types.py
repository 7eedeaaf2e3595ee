"""The DeepSpeed config values DeepSpeed takes unchecked: crild's table of them stays in
step with DeepSpeed, a wrong one is a one-line error naming the file and key, and what the
check lets through builds the optimizer and scheduler DeepSpeed will build."""
import json
from pathlib import Path

import pytest
import torch
from helpers import TRANSFORMERS_ZERO3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.training.ds_config import build_ds_config
from pipeline.training.ds_value_types import BOOL, SECTIONS, TOP_LEVEL, optimizer_class, scheduler_class

REPO = Path(__file__).resolve().parents[2]
SHIPPED = json.loads((REPO / "ds_configs" / "zero0_fp32.json").read_text())


def built(tmp_path: Path, cfg: dict, total_steps: int | None = 100) -> dict:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return build_ds_config(str(path), TrainConfig(), 1, total_steps, "run.yaml", "teacher", hidden_size=32)


def scalar_reads() -> dict:
    """The top-level settings DeepSpeedConfig reads with get_scalar_param, and their defaults."""
    import deepspeed.runtime.config as ds_config

    reads, original = {}, ds_config.get_scalar_param

    def record(params, name, default):
        reads.setdefault(name, default)
        return original(params, name, default)

    ds_config.get_scalar_param = record
    try:
        ds_config.DeepSpeedConfig({"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1})
    finally:
        ds_config.get_scalar_param = original
    return reads


def test_the_table_holds_every_top_level_setting_deepspeed_reads_and_no_other():
    """A DeepSpeed upgrade that adds or drops a top-level setting fails here, not in a run."""
    reads = scalar_reads()
    assert set(TOP_LEVEL) == set(reads)
    for name, default in reads.items():
        assert default is None or TOP_LEVEL[name].accepts(default), (name, default)


@pytest.mark.parametrize("section", [s for s in SECTIONS if "." not in s])
def test_every_section_in_the_table_is_one_deepspeed_or_crild_cannot_take_as_a_number(section):
    """DeepSpeed fails on a number where it reads an object (or crild does, for the sections
    it reads itself): no section is listed that a number would pass."""
    from deepspeed.runtime.config import DeepSpeedConfig

    if section in ("optimizer", "scheduler", "zero_optimization", "bf16", "fp16"):
        return  # read by crild itself (ds_config.default_sections, precision_dtype, zero_stage)
    with pytest.raises(Exception):  # noqa: B017  (any failure: DeepSpeed names none)
        DeepSpeedConfig({"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, section: 5})


@pytest.mark.parametrize("edit, message", [
    ({"steps_per_print": "x"}, 'steps_per_print: expected a whole number >= 1, got "x" (a string)'),
    ({"steps_per_print": 0}, "steps_per_print: expected a whole number >= 1, got 0"),
    ({"prescale_gradients": "no"}, 'prescale_gradients: expected true or false, got "no" (a string)'),
    ({"gradient_clipping": "1.0"}, 'gradient_clipping: expected a number, got "1.0" (a string)'),
    ({"gradient_accumulation_steps": 1.0}, "gradient_accumulation_steps: expected a whole number >= 1, got 1.0"),
    ({"bf16": True}, "bf16: expected an object ({...}), got true"),
    ({"bf16": {"enabled": "false"}}, 'bf16.enabled: expected true or false, got "false" (a string)'),
    ({"zero_optimization": {"stage": "2"}}, 'zero_optimization.stage: expected a whole number, got "2" (a string)'),
    ({"scheduler": None}, "scheduler: expected an object ({...}), got null; leave the key out for crild's default"),
    ({"optimizer": {"params": {"lr": "auto"}}}, 'optimizer: has no "type"'),
    ({"scheduler": {"params": {}}}, 'scheduler: has no "type"'),
    ({"optimizer": {"type": "AdamW", "params": {"torch_adam": True, "eps": "1e-8"}}},
     'optimizer.params.eps: expected a number, got "1e-8" (a string)'),
    ({"optimizer": {"type": "AdamW", "params": {"torch_adam": True, "betas": [0.9, 0.99, 0.9]}}},
     "optimizer.params.betas: expected a list of 2 numbers, got [0.9, 0.99, 0.9]"),
    ({"optimizer": {"type": "Adam", "params": {"momentum": 0.9}}},
     "optimizer.params.momentum: FusedAdam takes no 'momentum'"),
    ({"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1.0}}},
     "optimizer.params.max_grad_norm: DeepSpeed clips gradients itself; set stages.teacher.max_grad_norm"),
    ({"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "0"}}},
     'scheduler.params.warmup_min_lr: expected a number, got "0" (a string)'),
    ({"scheduler": {"type": "WarmupLR", "params": {"warmup_steps": 10}}},
     "scheduler.params.warmup_steps: WarmupLR takes no 'warmup_steps'"),
    ({"scheduler": {"type": "StepLR"}}, "scheduler.params: StepLR needs 'step_size'"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
     "zero_optimization.offload_param: cpu offload with ZeRO-2: only ZeRO-3 offloads parameters"),
    ({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
     "zero_optimization.offload_optimizer: cpu offload with ZeRO-0: ZeRO-0 offloads nothing"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}},
     "nvme offload with ZeRO-2: NVMe offload needs ZeRO-3; below it DeepSpeed offloads to CPU memory instead"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
     "zero_optimization.offload_param.nvme_path: NVMe offload needs the folder on the NVMe drive to write to"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "SGD", "params": {}}},
     "optimizer.type: SGD (SGD) is not one DeepSpeed's ZeRO supports"),
    ({"data_types": {"grad_accum_dtype": "float64"}},
     'data_types.grad_accum_dtype: "float64" is not a type DeepSpeed knows; expected one of fp16, float16, half, '),
    ({"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}},
     'data_types.grad_accum_dtype: "fp32" with ZeRO-0, and the training precision is bf16; DeepSpeed accumulates '),
    ({"data_types": {"param_dtype": "bf16"}}, 'data_types.param_dtype: "bf16", and the training precision is fp32'),
    ({"zero_optimisation": {"stage": 3}}, "unknown key 'zero_optimisation'; did you mean 'zero_optimization'?"),
    ({"gradient_clippping": 1.0}, "unknown key 'gradient_clippping'; did you mean 'gradient_clipping'?"),
    ({"optimizer": {"type": "AdamW", "param": {"lr": 1e-4}}}, "unknown key 'optimizer.param'; did you mean 'params'?"),
    ({"scheduler": {"type": "WarmupLR", "warmup_num_steps": 10}},
     "unknown key 'scheduler.warmup_num_steps'; expected one of type, params"),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}},
     "unknown key 'zero_optimization.overlap_com'; did you mean 'overlap_comm'?"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memroy": True}}},
     "unknown key 'zero_optimization.offload_optimizer.pin_memroy'; did you mean 'pin_memory'?"),
])
def test_a_value_deepspeed_would_fail_on_later_is_named_now(tmp_path, edit, message):
    with pytest.raises(UserError) as err:
        built(tmp_path, {**SHIPPED, **edit})
    assert str(err.value).startswith(f"{tmp_path / 'ds.json'}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_data_types_deepspeed_takes_pass(tmp_path):
    bf16 = {"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32", "param_dtype": "bfloat16"}}
    assert built(tmp_path, {**SHIPPED, **bf16, "zero_optimization": {"stage": 1}})["data_types"] == bf16["data_types"]
    built(tmp_path, {**SHIPPED, "data_types": {"grad_accum_dtype": "float32"}})  # the model's own type at ZeRO-0


# DeepSpeed's documented top-level keys (deepspeed.ai/docs/config-json), the ones crild's
# name scan must know so that none of them is taken for a misspelling
DOCUMENTED = ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
              "scheduler", "fp16", "bf16", "amp", "gradient_clipping", "prescale_gradients",
              "gradient_predivide_factor", "sparse_gradients", "zero_optimization", "zero_allow_untested_optimizer",
              "zero_force_ds_cpu_optimizer", "aio", "activation_checkpointing", "sparse_attention", "flops_profiler",
              "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "autotuning", "elasticity",
              "data_efficiency", "curriculum_learning", "compression_training", "checkpoint", "data_types",
              "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown", "dataloader_drop_last",
              "communication_data_type", "pipeline", "compile", "hybrid_engine", "weight_quantization",
              "torch_autocast", "nebula", "eigenvalue", "progressive_layer_drop", "quantize_training"]


def test_no_documented_or_shipped_key_is_taken_for_a_misspelling_and_a_key_of_ones_own_passes(tmp_path):
    from pipeline.training.ds_value_types import check_key_names, deepspeed_key_names

    assert set(DOCUMENTED) <= deepspeed_key_names()
    for shipped in (REPO / "ds_configs").glob("*.json"):
        check_key_names(json.loads(shipped.read_text()), shipped)
    built(tmp_path, {**SHIPPED, "_comment": "ZeRO-0 for CPU runs"})


def test_a_key_deepspeed_would_ignore_without_a_word_is_noted_once_in_the_stage(tmp_path, capsys):
    """A key too far from any of DeepSpeed's to be refused as a misspelling (``gradient_acc_steps``
    for ``gradient_accumulation_steps``) is still ignored by DeepSpeed: the stage says so, once
    however often it builds the config; the checks before a run, a key of one's own (``_...``)
    and the shipped configs say nothing."""
    cfg = {**SHIPPED, "gradient_acc_steps": 4, "_comment": "mine", "zero_optimization": {"stage": 0}}
    built(tmp_path, cfg, total_steps=None)
    assert "gradient_acc_steps" not in capsys.readouterr().err
    built(tmp_path, cfg)
    built(tmp_path, cfg)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"crild: note: {tmp_path / 'ds.json'}: DeepSpeed does not know 'gradient_acc_steps' and ignores it "
                   f"(start a key of your own with '_')"], err
    for shipped in (REPO / "ds_configs").glob("*.json"):
        built(tmp_path, json.loads(shipped.read_text()))
    assert "does not know" not in capsys.readouterr().err


def test_what_the_training_machine_lacks_is_refused_there_and_left_to_it_elsewhere(
        tmp_path, monkeypatch):
    """FusedLamb has no CPU implementation (DeepSpeed fails at engine build), and DeepSpeed's
    wandb monitor needs wandb; a login node submitting for GPUs judges neither."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    wandb = {"zero_optimization": {"stage": 0}, "wandb": {"enabled": True}}
    with pytest.raises(UserError, match="wandb.enabled: DeepSpeed's wandb monitor needs the wandb package, which is "
                                        "not installed here"):
        built(tmp_path, wandb)
    (tmp_path / "ds.json").write_text(json.dumps(wandb))
    build_ds_config(str(tmp_path / "ds.json"), TrainConfig(), 1, None, "run.yaml", "teacher", device_checks=False)
    lamb = {"zero_optimization": {"stage": 0}, "optimizer": {"type": "Lamb", "params": {}}}
    with pytest.raises(UserError, match=r"optimizer.type: Lamb \(FusedLamb\) has no implementation on this "
                                        r"machine's accelerator \(cpu\); use AdamW here, or run on a GPU"):
        built(tmp_path, lamb)
    path = tmp_path / "ds.json"
    build_ds_config(str(path), TrainConfig(), 1, None, "run.yaml", "teacher", device_checks=False)
    allowed = {"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
               "optimizer": {"type": "SGD", "params": {}}}
    assert built(tmp_path, allowed)["optimizer"]["type"] == "SGD"


def test_the_offloaded_optimizer_is_judged_as_deepspeeds_cpu_adam_and_params_crild_fills_need_not_be_given(tmp_path):
    offload = json.loads((REPO / "ds_configs" / "zero3_bf16_offload.json").read_text())
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    assert optimizer_class(offload) is DeepSpeedCPUAdam
    assert scheduler_class({"scheduler": {"type": "StepLR"}}) is torch.optim.lr_scheduler.StepLR
    cfg = built(tmp_path, {"scheduler": {"type": "WarmupDecayLR", "params": {}}})
    assert cfg["scheduler"]["params"]["total_num_steps"] == 100


@pytest.mark.parametrize("scheduler, unused", [
    ({"type": "OneCycle", "params": {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4}},
     "does not use stages.teacher.learning_rate or warmup_ratio"),
    ({"type": "StepLR", "params": {"step_size": 10}}, "does not use stages.teacher.warmup_ratio"),
    ({"type": "WarmupCosineLR", "params": {}}, None),
])
def test_a_scheduler_that_ignores_the_stages_settings_says_so_in_the_stage_only(tmp_path, capsys, scheduler, unused):
    built(tmp_path, {**SHIPPED, "scheduler": scheduler}, total_steps=None)  # a runner's checks: quiet
    assert capsys.readouterr().err == ""
    built(tmp_path, {**SHIPPED, "scheduler": scheduler})
    err = capsys.readouterr().err
    assert (f"scheduler {scheduler['type']} {unused}" in err) if unused else err == ""


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
                    | st.sampled_from(["", "x", "1e-8", "true", "auto"]),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=4)
ADAMW_KEYS = ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "capturable", "foreach", "momentum"]
SCHEDULER_KEYS = ["warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "total_num_steps"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(optimizer=st.dictionaries(st.sampled_from(ADAMW_KEYS), JSON, max_size=3),
       scheduler=st.dictionaries(st.sampled_from(SCHEDULER_KEYS), JSON, max_size=3))
def test_params_the_check_lets_through_build_the_optimizer_and_scheduler_deepspeed_builds(tmp_path, optimizer,
                                                                                          scheduler):
    """Any value in any of the params: a one-line error naming the key, or torch's AdamW and
    DeepSpeed's WarmupDecayLR build with what crild passes on (and take a step)."""
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    cfg = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True, **optimizer}},
           "scheduler": {"type": "WarmupDecayLR", "params": scheduler}}
    try:
        ds = built(tmp_path, cfg)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith(str(tmp_path / "ds.json"))
        return
    params = {k: v for k, v in ds["optimizer"]["params"].items() if k != "torch_adam"}
    weight = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([weight], **params)
    WarmupDecayLR(opt, **ds["scheduler"]["params"]).step()
    weight.grad = torch.ones(2)
    opt.step()


def test_a_boolean_is_never_taken_as_a_number_or_a_number_as_a_boolean():
    assert not BOOL.accepts(1) and not BOOL.accepts("true")
    assert not TOP_LEVEL["steps_per_print"].accepts(True)


def test_a_transformers_deepspeed_config_works_as_it_is(tmp_path, capsys):
    """Its "auto" values that crild has no setting for get ds_configs/' values (AdamW's betas
    and eps, warmup from 0), fp16 off, and bf16 where the training machine's GPU has it,
    which the stage says; a runner's checks, perhaps on another machine, take fp32 quietly."""
    built(tmp_path, TRANSFORMERS_ZERO3, total_steps=None)
    assert capsys.readouterr().err == ""
    cfg = built(tmp_path, TRANSFORMERS_ZERO3)
    assert cfg["optimizer"]["params"] == {"lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert cfg["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 2e-5, "warmup_num_steps": 10}
    assert cfg["fp16"]["enabled"] is False and cfg["zero_optimization"]["reduce_bucket_size"] == 32 ** 2
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert cfg["bf16"]["enabled"] is gpu_bf16
    assert f'bf16.enabled "auto" is {str(gpu_bf16).lower()} on this machine' in capsys.readouterr().err
