"""The teacher as distillation uses it: the folder it comes from (checked), the frozen model
(optionally partitioned with ZeRO-3), and its logits on fixed inputs, computed once per
(teacher, tokenized dataset), stored beside the dataset and reused by every epoch and run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from pipeline.data.tokenized import tokenizer_fingerprint
from pipeline.distill.terms import TERMS
from pipeline.errors import UserError
from pipeline.evaluation.predict import predict_logits
from pipeline.models.compiling import compile_layers
from pipeline.models.loading import WEIGHT_PATTERNS, build_classifier, resolve_model
from pipeline.outputs.atomic import renamed_into_place, verified
from pipeline.outputs.manifest import is_complete
from pipeline.outputs.trust import VERIFIED, trust_note
from pipeline.runtime.distributed import DistInfo, barrier
from pipeline.training.ds_config import fill_zero_buckets, precision_dtype, zero_stage
from pipeline.training.ds_files import load_ds_json


def tokenize_alike(distill_cfg, phases, teacher_tokenizer, student_tokenizer, teacher_name: str,
                   student_name: str) -> bool:
    """Whether the two tokenizers tokenize alike (vocabulary, special tokens, normalisation:
    never decided from model names). When they do not, a teacher serves prediction-layer terms
    only: one line for phases with mixup or terms that read tokens position by position."""
    if tokenizer_fingerprint(teacher_tokenizer) == tokenizer_fingerprint(student_tokenizer):
        return True
    aligned = sorted({t for p in phases for t in p.terms if TERMS[t].token_aligned}
                     | ({"mixup"} if any(p.mixup for p in phases) else set()))
    if aligned:
        raise UserError(
            f"stages.distill: preset '{distill_cfg.preset}' needs teacher and student to tokenize alike "
            f"({', '.join(aligned)} read them position by position), and they do not: teacher '{teacher_name}' "
            f"({type(teacher_tokenizer).__name__}, {len(teacher_tokenizer)} tokens), student "
            f"'{student_name}' ({type(student_tokenizer).__name__}, {len(student_tokenizer)} tokens); use a "
            f"prediction-layer preset (kd) or a student with the teacher's tokenizer")
    return False


def teacher_folder(cfg) -> tuple[Path, Optional[str]]:
    """``stages.distill.teacher_model`` (checked by the trust rule), or the run's own teacher
    (complete and intact); with the trust note for the stage's log."""
    distill_cfg = cfg.stages.distill
    if distill_cfg.teacher_model:
        where = "stages.distill.teacher_model"
        folder = Path(resolve_model(distill_cfg.teacher_model, where))
        return folder, trust_note(folder, where)
    folder = Path(cfg.output_dir) / "teacher"
    if not is_complete(folder):
        raise UserError(f"{folder}: no complete teacher; run the teacher stage first "
                        f"(crild run, or stage1_teacher.py) or set stages.distill.teacher_model")
    return verified(folder, "the teacher"), f"teacher: {folder}: {VERIFIED}"


class FrozenTeacher:
    """The teacher: frozen, eval mode, no gradients. With ``teacher_deepspeed_config`` at
    ZeRO-3 its parameters are partitioned over the ranks (transformers' DeepSpeed
    integration builds it already partitioned), for teachers too large for one device."""

    def __init__(self, cfg, folder: Path, spec, dist: DistInfo, logits: bool = True):
        """``logits``: a term reads the teacher's predictions, so its classifier must be
        trained (intermediate layers alone can come from a backbone, as in task-agnostic
        distillation)."""
        self.folder = folder
        self.partitioned = False
        self.dtype = torch.float32
        self.compiled = False
        path = cfg.stages.distill.teacher_deepspeed_config
        if path is not None:
            _, teacher_ds = load_ds_json(path, cfg.source)
            if zero_stage(teacher_ds) == 3:
                self.model = self._partitioned(teacher_ds, folder, spec, dist, logits)
                self.partitioned = True
                return
        self.model = build_classifier(str(folder), spec, "stages.distill.teacher_model", trained=logits)
        self.model.to(device=dist.device).eval().requires_grad_(False)

    @staticmethod
    def _partitioned(teacher_ds: dict, folder: Path, spec, dist: DistInfo, logits: bool) -> torch.nn.Module:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        teacher_ds = {k: v for k, v in teacher_ds.items() if k not in ("optimizer", "scheduler")}
        fill_zero_buckets(teacher_ds, json.loads((folder / "config.json").read_text())["hidden_size"])
        teacher_ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                          train_batch_size=dist.world_size)
        hf_ds = HfDeepSpeedConfig(teacher_ds)  # while alive, from_pretrained builds partitioned models
        model = build_classifier(str(folder), spec, "stages.distill.teacher_model", trained=logits)
        engine, _, _, _ = deepspeed.initialize(model=model, config=teacher_ds)
        del hf_ds  # the student must not be partitioned: it trains under its own ZeRO stage
        return engine.module.eval().requires_grad_(False)

    def set_dtype(self, engine_dtype: torch.dtype, setting: str = "auto") -> None:
        """Run in ``teacher_dtype(setting, engine_dtype)``; a partitioned teacher keeps its
        DeepSpeed config's."""
        if self.partitioned:
            return
        self.dtype = teacher_dtype(setting, engine_dtype)
        self.model.to(self.dtype)


    def compile(self) -> None:
        """torch.compile the teacher's encoder layers, once (``compile: true``)."""
        if self.partitioned:
            raise UserError("compile: true is not supported with a ZeRO-3 teacher "
                            "(stages.distill.teacher_deepspeed_config); set compile: false")
        if not self.compiled:
            compile_layers(self.model)
            self.compiled = True


def teacher_dtype(setting: str, engine_dtype: torch.dtype) -> torch.dtype:
    """The precision the teacher runs in: ``stages.distill.teacher_precision``, where auto is
    bf16 on a GPU that has it, else the student engine's precision. Its cached logits are
    named by it, so whatever computes them ahead (the augment stage) uses it too."""
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32 if setting == "fp32" else engine_dtype


def kd_teacher_dtype(cfg) -> torch.dtype:
    """The precision of the KD phase's teacher (``FrozenTeacher`` as the phase sets it), from
    the configuration alone: what the augment stage stores the teacher's logits in, ahead of
    that phase. A partitioned teacher keeps its DeepSpeed config's precision, and its logits
    are named as fp32 ones."""
    distill = cfg.stages.distill
    if distill.teacher_deepspeed_config is not None \
            and zero_stage(load_ds_json(distill.teacher_deepspeed_config, cfg.source)[1]) == 3:
        return torch.float32
    _, kd_ds = load_ds_json(distill.kd.deepspeed_config or cfg.deepspeed_config, cfg.source)
    return teacher_dtype(distill.teacher_precision, precision_dtype(kd_ds))


def teacher_fingerprint(folder: str | Path) -> str:
    """Content hash of a model folder's config and weights, every shard of a sharded
    checkpoint included (its index alone is the same for two checkpoints of one shape)."""
    h = hashlib.sha256()
    folder = Path(folder)
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    for p in [folder / "config.json", *weights]:
        if p.is_file():
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def dataset_dir(ds) -> Path:
    return Path(ds.cache_files[0]["filename"]).parent


def cached_teacher_logits(forward, teacher_id: str, ds, collate, batch_size: int, dist: DistInfo,
                          dtype: torch.dtype = torch.float32, inference: bool = True) -> torch.Tensor:
    """(len(ds), num_labels) float32 teacher logits on the clean training inputs, computed
    in ``dtype`` (part of the cache's name, fp32 unnamed) under inference mode (``inference``:
    not for a ZeRO-3 teacher, whose gathered weights must stay ordinary tensors). Kept beside
    the tokenized data; where that is in memory (its cache folder cannot be written), the
    logits are too, once for the stage."""
    suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    path = dataset_dir(ds) / f"teacher_logits-{teacher_id}{suffix}.safetensors" if ds.cache_files else None
    if path is None or not path.is_file():
        with torch.inference_mode(inference):
            logits = predict_logits(forward, ds, collate, batch_size, dist)  # sharded over ranks
        if path is None:
            return torch.from_numpy(logits).float()
        if dist.is_main:
            with renamed_into_place(path) as tmp:
                save_file({"logits": torch.from_numpy(logits).float()}, str(tmp))
        barrier()
    return load_file(str(path))["logits"]
