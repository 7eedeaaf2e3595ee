"""What the tests build for themselves: a tiny word-level BERT (hidden 32), small labelled
datasets with a learnable signal, and run configurations for them. Fixtures that use these
are in conftest.py."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

POSITIVE = ["good", "great", "fine", "lovely", "superb", "brilliant", "moving", "funny"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "poor", "tedious", "messy"]
FILLER = ["the", "a", "film", "movie", "story", "was", "is", "very", "quite", "and", "but", "plot", "actors",
          "cast", "scene", "ending", "this", "that", "it", "with", "of", "to", "man", "woman", "dog", "cat",
          "runs", "sleeps", "outside", "inside", "park", "street", "plays", "music", "eats", "food"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + POSITIVE + NEGATIVE + FILLER


def write_tiny_bert(folder: Path, num_layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    assert tok.convert_ids_to_tokens(tok("good film")["input_ids"]) == ["[CLS]", "good", "film", "[SEP]"]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 5) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words) + " ."


def write_sentiment_task(folder: Path, sizes=(("train", 96), ("dev", 32), ("test", 32)), seed: int = 0) -> Path:
    """rotten_tomatoes-format JSONL splits whose label is decided by one sentiment word."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        with open(folder / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                label = i % 2
                fh.write(json.dumps({"sentence": sentence(rng, label), "label": ["rotten", "fresh"][label]}) + "\n")
    return folder


TONES = ["negative", "neutral", "positive"]


def write_tone_task(folder: Path, sizes=(("train", 96), ("dev", 30), ("test", 30))):
    """Three classes, decided by a sentiment word or its absence; CSV with columns of the
    user's naming (``review``, ``tone``)."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        with open(folder / f"{split}.csv", "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["review", "tone"])
            for i in range(n):
                tone = i % 3
                words = rng.sample(FILLER, 5) + [rng.choice(NEGATIVE)] * (tone == 0) + [rng.choice(POSITIVE)] * (tone == 2)
                out.writerow([" ".join(words), TONES[tone]])
    return folder


def write_hub_copy(folder: Path, splits: dict, features=None) -> Path:
    """A local copy of a hub dataset as ``hf download --repo-type dataset`` leaves one: each
    split (name -> rows) a Parquet shard under ``data/``, named as the hub names shards, its
    features (a class label's names) in the files' metadata."""
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        datasets.Dataset.from_list(rows, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def cache_hub_dataset(cache: Path, repo: str, commit: str, splits: dict, features=None,
                      config: str = "default") -> Path:
    """What ``datasets.load_dataset(repo)`` leaves in the datasets cache ``cache`` after
    reading commit ``commit`` of a hub dataset of Parquet files, on a machine that reaches the
    hub: each split (name -> rows) as Arrow under ``owner___name/config/0.0.0/commit``. The
    rows go through datasets' own Parquet builder; only the folder it is filed under is the
    hub's (a local builder files it by the hash of its data files)."""
    import shutil
    import tempfile

    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_hub_copy(Path(tmp) / "copy", splits, features) / "data"
        builder = Parquet(cache_dir=str(Path(tmp) / "built"), dataset_name=name, hash=commit,
                          data_files={s: str(shards / f"{s}-00000-of-00001.parquet") for s in splits})
        builder.download_and_prepare()
        built = Path(builder.cache_dir)
        info = json.loads((built / datasets.config.DATASET_INFO_FILENAME).read_text())
        (built / datasets.config.DATASET_INFO_FILENAME).write_text(json.dumps({**info, "config_name": config}))
        target = cache / f"{owner}___{name}" / config / built.parent.name / commit
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built, target)
    return target


def tone_rows(folder: Path, split: str) -> list[dict]:
    """The rows of ``write_tone_task``'s split ``split``, as dicts (columns review, tone)."""
    with open(folder / f"{split}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def tiny_run_config(tmp_path: Path, tiny_bert: Path, data_dir: Path, **stage) -> dict:
    """A raw run configuration for the tiny model and data (dict, before validation)."""
    train = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 4, "log_every": 2,
             "eval_every": 4, "eval_batch_size": 16, **stage}
    return {
        "output_dir": str(tmp_path / "run"), "seed": 7, "deepspeed_config": "ds_configs/zero0_fp32.json",
        "task": {"name": "rotten_tomatoes", "data_dir": str(data_dir), "max_length": 32},
        "teacher": {"model": str(tiny_bert)},
        "student": {"init": "truncated", "backbone": str(tiny_bert), "num_layers": 2},
        "stages": {"teacher": train},
    }


def scalar_tags(event_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(event_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def once_per_session(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name`` that ``make(folder)`` fills, made once per test session: by the first
    pytest-xdist worker to ask, under a lock the others wait on, then read by all. A folder left
    by a worker that failed part-way is made again."""
    import os
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # the session's, above each worker's
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".made").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


def crild_env(**extra) -> dict:
    """The environment of a crild subprocess: this checkout, one thread, no inherited ranks."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "CRILD_FAULT",
                "CRILD_RUN_LOCK"):
        env.pop(key, None)
    return env


class Crild:
    """``python -m pipeline.cli ARGS`` in the background, its output collected line by line."""

    def __init__(self, *args: str, env: dict | None = None, preexec_fn=None):
        import subprocess
        import sys
        import threading

        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env or crild_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=preexec_fn)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        """The first output line containing ``text`` (fails the test after ``timeout``)."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = next((line for line in self.lines if text in line), None)
            if found is not None:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


# --------------------------------------------------------------------------- encoder families

# the tokenizer each family's tiny model gets: the WordPiece vocabulary above, a byte-level
# BPE (RoBERTa's kind) or a SentencePiece unigram model (DeBERTa-v3's and XLM-R's kind),
# both trained here on sentences of the same words
FAMILY_TOKENIZERS = {"bert": "wordpiece", "electra": "wordpiece", "distilbert": "wordpiece", "mpnet": "wordpiece",
                     "modernbert": "wordpiece", "roberta": "bpe", "xlm-roberta": "sentencepiece",
                     "deberta-v2": "sentencepiece"}


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, i % 2) for i in range(n)]


def write_tokenizer(folder: Path, kind: str, model_type: str):
    """A real tokenizer of ``kind`` saved in ``folder`` and loaded back with AutoTokenizer."""
    import json

    from transformers import AutoTokenizer, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "wordpiece":
        (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(str(folder))
    elif kind == "bpe":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_corpus(), vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(folder))
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    else:
        import sentencepiece as spm

        (folder / "corpus.txt").write_text("\n".join(_corpus()))
        spm.SentencePieceTrainer.train(
            input=str(folder / "corpus.txt"), model_prefix=str(folder / "spm"), vocab_size=60, model_type="unigram",
            hard_vocab_limit=False, character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
            minloglevel=2)
        (folder / "corpus.txt").unlink()
        (folder / "spm.vocab").unlink()
        special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                   "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]"}
        if model_type == "xlm-roberta":
            (folder / "spm.model").rename(folder / "sentencepiece.bpe.model")
            (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer",
                                                                     **special}))
        else:
            (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))  # as a tokenizer.json, as transformers writes it
    return tok


def write_tiny_classifier(backbone: Path, folder: Path, task: str = "rotten_tomatoes") -> Path:
    """``backbone`` as a classifier for ``task``, every weight saved (its head random): a
    folder that scoring, export and logit distillation accept as trained."""
    from pipeline.data.tasks import TASKS
    from pipeline.models.loading import build_classifier, load_tokenizer, save_model

    model = build_classifier(str(backbone), TASKS[task], "teacher")
    save_model(model, load_tokenizer(str(backbone), "teacher"), folder)
    return folder


def write_tiny_family(folder: Path, model_type: str, num_layers: int = 4, hidden: int = 32, heads: int = 4,
                      seed: int = 0, tokenizer: str | None = None) -> Path:
    """A random encoder of one family (transformers' own config class) with a real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModel

    tok = write_tokenizer(folder, tokenizer or FAMILY_TOKENIZERS[model_type], model_type)
    shape = {"vocab_size": len(tok), "hidden_size": hidden, "num_hidden_layers": num_layers,
             "num_attention_heads": heads, "max_position_embeddings": 66, "pad_token_id": tok.pad_token_id}
    extra = {
        "distilbert": {"hidden_dim": 2 * hidden},
        "modernbert": {"intermediate_size": 2 * hidden, "bos_token_id": tok.cls_token_id,
                       "eos_token_id": tok.sep_token_id, "cls_token_id": tok.cls_token_id,
                       "sep_token_id": tok.sep_token_id, "global_attn_every_n_layers": 2, "local_attention": 8},
        "deberta-v2": {"intermediate_size": 2 * hidden, "type_vocab_size": 0, "relative_attention": True,
                       "position_biased_input": False, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                       "max_relative_positions": -1, "norm_rel_ebd": "layer_norm", "share_att_key": True},
    }.get(model_type, {"intermediate_size": 2 * hidden})
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        extra.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.for_model(model_type, **shape, **extra)).save_pretrained(str(folder))
    return folder


def write_tiny_mlm(folder: Path, encoder: Path, seed: int = 0) -> Path:
    """A random masked LM (``*ForMaskedLM``) of ``encoder``'s family, shape and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if not folder.exists():
        torch.manual_seed(seed)
        AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(str(encoder))).save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(str(encoder)).save_pretrained(str(folder))
    return folder


def write_vectors(path: Path, dims: int = 8) -> Path:
    """GloVe-format vectors of the tiny vocabulary's words (and two that split into pieces)."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = POSITIVE + NEGATIVE + FILLER + ["filmmaker", "cinematography"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(w + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=dims)) for w in words) + "\n")
    return path


# --------------------------------------------------------------------------- a file system without flock

def deny_flock() -> None:
    """Make the flock system call fail with ENOSYS in this process and every process it
    starts, as it does on Lustre mounted ``noflock``: a seccomp filter, for ``preexec_fn``.
    Raises OSError where seccomp is not permitted."""
    import ctypes
    import errno
    import platform
    import struct

    machine = platform.machine()
    nr_flock, audit_arch = {"x86_64": (73, 0xC000003E), "aarch64": (32, 0xC00000B7)}[machine]

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    load, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    program = b"".join([op(load, 0, 0, 4), op(jeq, 0, 3, audit_arch),  # another architecture: allow
                        op(load, 0, 0, 0), op(jeq, 0, 1, nr_flock),
                        op(ret, 0, 0, 0x00050000 | errno.ENOSYS),  # SECCOMP_RET_ERRNO
                        op(ret, 0, 0, 0x7FFF0000)])  # SECCOMP_RET_ALLOW
    code = ctypes.create_string_buffer(program)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Program(len(program) // 8, ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "seccomp is not permitted here")


# transformers' ZeRO-3 config as its DeepSpeed guide gives it: "auto" wherever the Trainer fills a value
TRANSFORMERS_ZERO3 = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                 "warmup_num_steps": "auto"}},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "none", "pin_memory": True},
                          "offload_param": {"device": "none", "pin_memory": True}, "overlap_comm": True,
                          "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                          "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
                          "stage3_gather_16bit_weights_on_model_save": True},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False}
