"""The GPU path (``tools/gpu_check.sh --run`` runs these on a CUDA machine; marked ``gpu``).
Each test runs on CUDA when there is one; the ones that mean something on a CPU too (engine
steps at every ZeRO stage in bf16, the logit cache, exact resume) run there as well, the
CUDA-only ones (SDPA's CUDA kernels, DeepSpeed's FusedAdam, GPU against CPU) are skipped."""
import copy
import os

import pytest
import torch
from helpers import tiny_run_config

from pipeline.config import TrainConfig, from_dict
from pipeline.data.tasks import TASKS
from pipeline.models.capture import LayerCapture
from pipeline.models.loading import build_classifier

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEVICE = torch.device("cuda" if CUDA else "cpu")
SPEC = TASKS["rotten_tomatoes"]


def batch(device=DEVICE, rows=4, length=12, seed=0, padded=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 50, (rows, length), generator=g)
    ids[:, 0] = 2  # [CLS]
    if padded:
        ids[1:, length // 2:] = 0  # padding in every row but the first
    mask = (ids != 0).long()
    return {"input_ids": ids.to(device), "token_type_ids": torch.zeros_like(ids).to(device),
            "attention_mask": mask.to(device), "labels": torch.tensor([0, 1] * (rows // 2)).to(device),
            "index": torch.arange(rows)}


@pytest.fixture(scope="module")
def dist():
    from pipeline.runtime.distributed import init_distributed

    return init_distributed()


@pytest.mark.parametrize("ds_config", ["zero0_bf16.json", "zero1_bf16.json", "zero2_bf16.json", "zero3_bf16.json"])
def test_bf16_engine_steps_at_every_zero_stage(dist, tiny_bert, ds_config):
    from helpers import REPO

    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    model = build_classifier(str(tiny_bert), SPEC, "student")
    before = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    ds_cfg = build_ds_config(str(REPO / "ds_configs" / ds_config), TrainConfig(batch_size=4, learning_rate=1e-3), 1,
                             10, "test", "teacher", hidden_size=32)
    engine = build_engine(model, 0.01, ds_cfg)
    b = batch()
    for _ in range(2):
        loss = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        assert torch.isfinite(loss)
        engine.backward(loss)
        engine.step()
    from pipeline.training.engine import consolidated_state_dict

    after = consolidated_state_dict(engine, ds_cfg)
    assert any(not torch.equal(before[k], after[k].float().cpu()) for k in before if "classifier" in k)


@needs_cuda
@pytest.mark.parametrize("optimizer", [{"type": "AdamW", "params": {}},  # DeepSpeed's FusedAdam (a CUDA op)
                                       {"type": "AdamW", "params": {"torch_adam": True, "fused": True}}])
def test_cuda_optimizers_step(dist, tiny_bert, optimizer, tmp_path):
    import json

    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
                                "optimizer": {**optimizer, "params": {"lr": "auto", "weight_decay": "auto",
                                                                      **optimizer["params"]}}}))
    model = build_classifier(str(tiny_bert), SPEC, "student")
    engine = build_engine(model, 0.01, build_ds_config(str(path), TrainConfig(batch_size=4), 1, 10, "t", "teacher",
                                                       hidden_size=32))
    b = batch()
    loss = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    engine.backward(loss)
    engine.step()
    assert torch.isfinite(loss)


@needs_cuda
@pytest.mark.parametrize("kernel", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"])
def test_captures_under_each_cuda_sdpa_kernel_equal_eager(tiny_bert, kernel):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForSequenceClassification

    fast = build_classifier(str(tiny_bert), SPEC, "teacher").to(DEVICE, torch.bfloat16).eval()
    eager = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), attn_implementation="eager",
                                                               num_labels=2).to(DEVICE, torch.bfloat16).eval()
    eager.load_state_dict(fast.state_dict())
    # SDPA's flash kernel takes no attention mask: a padded batch runs the efficient kernel
    # (PyTorch's choice, not crild's), so flash is checked on a batch without padding, where
    # transformers passes no mask
    b = batch(padded=kernel != "FLASH_ATTENTION")
    inputs = {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with LayerCapture(eager, [0, -1], ("q", "k", "v", "hidden")) as ref, torch.no_grad():
        eager(**inputs)
    with LayerCapture(fast, [0, -1], ("q", "k", "v", "hidden")) as cap, torch.no_grad(), \
            sdpa_kernel(getattr(SDPBackend, kernel)):
        fast(**inputs)
    mask = b["attention_mask"].bool()
    for layer in ref.outputs:
        for kind, value in ref.outputs[layer].items():
            torch.testing.assert_close(cap.outputs[layer][kind][mask].float(), value[mask].float(), atol=3e-2,
                                       rtol=3e-2)


@needs_cuda
def test_cr_ild_loss_on_the_gpu_equals_the_cpu_loss_in_fp32(tiny_bert):
    from pipeline.distill.layers import layer_layout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import resolve_phases
    from pipeline.distill.student import DistillModule

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = from_dict({"seed": 3, "stages": {"distill": {"preset": "cr-ild"}}})
    phase = resolve_phases(cfg.stages.distill)[0]
    teacher = build_classifier(str(tiny_bert), SPEC, "teacher").eval().requires_grad_(False)
    student = build_classifier(str(tiny_bert), SPEC, "student", num_layers=2).eval()  # no dropout: comparable
    totals = {}
    for device in (torch.device("cpu"), DEVICE):
        t, s = copy.deepcopy(teacher).to(device), copy.deepcopy(student).to(device)
        layout = layer_layout(cfg.stages.distill, phase, s.config, t.config)
        objective = DistillObjective(cfg, phase, DistillModule(s, [], 32), t, layout, device, 10)
        objective.module.student.eval()
        # the batch in host memory, as the training loop hands it over: the objective moves it
        totals[device.type], _ = objective(type("E", (), {"global_steps": 0})(), batch(torch.device("cpu")), 5)
    torch.testing.assert_close(totals["cuda"].cpu(), totals["cpu"], atol=1e-5, rtol=1e-4)


@needs_cuda
def test_a_cr_ild_step_makes_no_host_synchronisation(tiny_bert):
    """Both CR-ILD phases never wait for the GPU: the ILD step's forwards (mixup view,
    captures, consistency target), the KD step on the teacher's cached logits, their terms and
    backward passes. CUDA's sync debug mode raises on any call that would wait (a read of a
    device value, a blocking copy). tests/models/test_attention_masks.py checks the reads on
    the meta device."""
    from pipeline.distill.layers import layer_layout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import resolve_phases
    from pipeline.distill.student import DistillModule

    cfg = from_dict({"seed": 3, "stages": {"distill": {"preset": "cr-ild"}}})
    host = {k: v.pin_memory() for k, v in batch(torch.device("cpu")).items()}  # as fetch() gives it
    engine = type("E", (), {"global_steps": 0})()
    for phase in resolve_phases(cfg.stages.distill):  # ild, then kd on cached logits
        teacher = build_classifier(str(tiny_bert), SPEC, "teacher").to(DEVICE).eval().requires_grad_(False)
        student = build_classifier(str(tiny_bert), SPEC, "student", num_layers=2).to(DEVICE)
        layout = layer_layout(cfg.stages.distill, phase, student.config, teacher.config)
        cache = torch.randn(len(host["index"]), 2) if phase.name == "kd" else None
        objective = DistillObjective(cfg, phase, DistillModule(student, [], 32).to(DEVICE), teacher, layout, DEVICE,
                                     10, teacher_logits=cache)
        objective(engine, host, 4)[0].backward()  # warm-up: kernels picked, workspaces allocated
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            total, _ = objective(engine, host, 5)
            total.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(total), phase.name


def test_teacher_logits_are_computed_once(dist, tiny_bert, tmp_path):
    import datasets

    from pipeline.data.batching import Collator
    from pipeline.distill.teacher import cached_teacher_logits
    from pipeline.evaluation.predict import classifier_forward

    rows = batch(torch.device("cpu"), rows=8)
    ds = datasets.Dataset.from_dict({"input_ids": rows["input_ids"].tolist(),
                                     "token_type_ids": rows["token_type_ids"].tolist(),
                                     "label": [0, 1] * 4, "length": [12] * 8})
    ds.save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    teacher = build_classifier(str(tiny_bert), SPEC, "teacher").to(DEVICE).eval()
    calls = []
    forward = classifier_forward(teacher, DEVICE)

    def counted(b):
        calls.append(1)
        return forward(b)

    first = cached_teacher_logits(counted, "t1", ds, Collator(0, False), 4, dist)
    again = cached_teacher_logits(counted, "t1", ds, Collator(0, False), 4, dist)
    assert len(calls) == 2 and torch.equal(first, again) and first.shape == (8, 2)


def test_resume_on_this_device_is_exact(tmp_path, tiny_bert, sentiment_dir):
    """Deterministic algorithms on: a run stopped and resumed ends bitwise equal to an
    uninterrupted one (on a GPU as on the CPU)."""
    from safetensors.torch import load_file

    from pipeline import stage1_teacher
    from pipeline.errors import EXIT_PREEMPTED
    from pipeline.training.stop import StopRequest

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        weights = {}
        for name, stop_after in (("full", None), ("resumed", 5)):
            raw = tiny_run_config(tmp_path / name, tiny_bert, sentiment_dir, epochs=1)
            if CUDA:
                raw["deepspeed_config"] = "ds_configs/zero0_bf16.json"
            cfg = from_dict(raw)
            if stop_after:
                assert stage1_teacher.run(cfg, stop=StopRequest(stop_after, install_handlers=False)) == EXIT_PREEMPTED
            assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
            weights[name] = load_file(str(tmp_path / name / "run" / "teacher" / "model.safetensors"))
        assert all(torch.equal(weights["full"][k], weights["resumed"][k]) for k in weights["full"])
    finally:
        torch.use_deterministic_algorithms(False)
