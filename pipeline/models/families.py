"""Encoder families: how crild reaches the parts of each kind of encoder it distils. One
entry per family says where the layers, the embedding module (the mixup view mixes its
output) and the Q/K/V projections are, whether Q/K/V come from one fused projection (split
in three) and get a rotary embedding inside the attention, whether the model takes token
types, how many positions are reserved, the attention kernel crild loads it with, where
its masked LM's head is (augmentation runs it at the masked positions only), and
whether its attention is exactly softmax(QK^T / sqrt(d)) (then attention-map terms transfer
the real attention; otherwise they transfer that part of it), and which attention masks its
forward takes ready-made (so that transformers need not ask the device whether a batch has
padding).

Adding a family is one entry here plus a tiny model in ``tests/helpers.py``; the family
tests then run every capture and preset on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import UserError


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    model_types: tuple  # config.model_type values of this family
    layers: str  # the list of Transformer layers, from the base encoder
    embeddings: str  # the embedding module, from the base encoder
    query: str  # inside one layer: the Q projection, or the fused QKV projection when ``fused``
    key: str = ""
    value: str = ""
    fused: bool = False  # one projection gives [Q | K | V] along the last dimension
    rotary: str = ""  # the attention module that rotates Q and K (inside one layer); needs ``fused``
    token_types: bool = True  # the model's forward takes token_type_ids
    reserved_positions: int = 0  # positions taken before the first token (RoBERTa's padding offset)
    attention: str = "sdpa"  # the kernel crild loads it with: the fastest transformers offers on every device
    exact_attention: bool = True  # attention = softmax(QK^T / sqrt(d)) with no other score terms
    truncate_also: tuple = field(default=())  # per-layer config lists cut with num_hidden_layers
    ffn_key: str = "intermediate_size"  # the config key of the feed-forward width
    masks: tuple = ("full",)  # the attention masks its forward takes (pipeline/models/attention_masks.py); () for its own
    # its masked LM's head: modules of *ForMaskedLM applied in turn to the encoder's output (a masked LM
    # without them, DeBERTa's with legacy: false, runs its own forward instead)
    mlm_head: tuple = ("cls",)

    def __post_init__(self):
        if self.rotary and not self.fused:  # the capture rotates Q and K where it splits the fused output
            raise ValueError(f"{self.name}: a rotary family must have a fused QKV projection")

    def truncate(self, config, num_layers: int) -> None:
        """Keep the bottom ``num_layers`` layers (a student's truncated initialisation)."""
        for name in self.truncate_also:
            setattr(config, name, list(getattr(config, name))[:num_layers])
        config.num_hidden_layers = num_layers


_BERT = dict(layers="encoder.layer", embeddings="embeddings", query="attention.self.query",
             key="attention.self.key", value="attention.self.value")

FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in [
    EncoderFamily("bert", ("bert",), **_BERT),
    EncoderFamily("roberta", ("roberta", "camembert"), **_BERT, reserved_positions=2, mlm_head=("lm_head",)),
    EncoderFamily("xlm-roberta", ("xlm-roberta",), **_BERT, reserved_positions=2, mlm_head=("lm_head",)),
    EncoderFamily("electra", ("electra",), **_BERT, mlm_head=("generator_predictions", "generator_lm_head")),
    EncoderFamily("distilbert", ("distilbert",), layers="transformer.layer", embeddings="embeddings",
                  query="attention.q_lin", key="attention.k_lin", value="attention.v_lin", token_types=False,
                  ffn_key="hidden_dim", mlm_head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")),
    # disentangled attention: content-to-position terms join QK^T; no SDPA kernel in transformers
    EncoderFamily("deberta-v2", ("deberta-v2",), layers="encoder.layer", embeddings="embeddings",
                  query="attention.self.query_proj", key="attention.self.key_proj",
                  value="attention.self.value_proj", attention="eager", exact_attention=False, masks=()),
    # one fused Wqkv; rotary positions applied to Q and K inside the attention; no token types
    EncoderFamily("modernbert", ("modernbert",), layers="layers", embeddings="embeddings", query="attn.Wqkv",
                  fused=True, rotary="attn", token_types=False, truncate_also=("layer_types",),
                  masks=("full", "sliding"), mlm_head=("head", "decoder")),
    # relative position bias joins QK^T
    EncoderFamily("mpnet", ("mpnet",), layers="encoder.layer", embeddings="embeddings", query="attention.attn.q",
                  key="attention.attn.k", value="attention.attn.v", token_types=False, reserved_positions=2,
                  attention="eager", exact_attention=False, mlm_head=("lm_head",)),
]}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


def family_of(config_or_model, where: str = "model") -> EncoderFamily:
    """The family of a transformers config or model; an unsupported one is one line that
    lists the supported ones."""
    config = config_or_model
    for _ in range(3):  # a DeepSpeed engine -> its module -> the module's config
        if hasattr(config, "model_type"):
            break
        config = getattr(config, "module", None) or getattr(config, "config", None)
    family = _BY_MODEL_TYPE.get(getattr(config, "model_type", None))
    if family is None:
        raise UserError(f"{where}: model type '{config.model_type}' is not supported (supported: "
                        f"{', '.join(sorted(_BY_MODEL_TYPE))})")
    return family


def get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def base_encoder(model):
    """The base encoder (``model.bert``, ``model.roberta``, ...) of a task model."""
    return getattr(model, model.base_model_prefix, model)


def encoder_layers(model):
    return get_path(base_encoder(model), family_of(model).layers)


def embedding_module(model):
    return get_path(base_encoder(model), family_of(model).embeddings)
