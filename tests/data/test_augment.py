"""Augmentation with tiny random masked LMs (BERT's, and one of every family) and a small vector
file the tests write."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAMILY_TOKENIZERS, FILLER, NEGATIVE, POSITIVE, VOCAB, tiny_run_config, write_tiny_mlm

from pipeline import stage2_augment
from pipeline.config import from_dict
from pipeline.data.augment import (
    AugmentParams,
    BatchedAugmenter,
    MaskedLM,
    OriginalAugmenter,
    load_vectors,
    require_mlm_head,
    sample_copies,
)
from pipeline.errors import UserError
from pipeline.stages import FORCED_ENV

SENTS_A = ["the film was good and the story was moving .", "a dull movie with weak actors .",
           "the cat sleeps inside the park", "brilliant music and lovely scene"]
SENTS_B = ["the dog runs outside .", "the woman eats food", "it was boring", "a funny ending"]


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("vec") / "vectors.txt"
    words = POSITIVE + NEGATIVE + FILLER + ["filmmaker", "cinematography"]
    path.write_text("\n".join(w + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=8)) for w in words) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_mlm(tiny_bert, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("mlm") / "tiny-mlm"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(folder))
    return folder


def augmenters(tiny_bert, tiny_mlm, vectors_file, seed=0, copies=6):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    mlm = MaskedLM(str(tiny_mlm), torch.device("cpu"))
    vec = load_vectors(str(vectors_file), None)
    params = AugmentParams(copies=copies, replace_prob=0.4, candidates=5)
    return (BatchedAugmenter(tok, vec, mlm, params, seed, batch_size=3),
            OriginalAugmenter(tok, vec, mlm, params, seed))


def test_batched_equals_original_and_is_deterministic(tiny_bert, tiny_mlm, vectors_file):
    batched, original = augmenters(tiny_bert, tiny_mlm, vectors_file)
    ids = np.arange(4)
    out = batched.augment(SENTS_A, SENTS_B, ids)
    assert out == original.augment(SENTS_A, SENTS_B, ids)
    assert out == augmenters(tiny_bert, tiny_mlm, vectors_file)[0].augment(SENTS_A, SENTS_B, ids)
    assert out != augmenters(tiny_bert, tiny_mlm, vectors_file, seed=1)[0].augment(SENTS_A, SENTS_B, ids)
    # an example's output depends on its id, not on its neighbours in the call
    assert batched.augment(SENTS_A[2:], SENTS_B[2:], ids[2:]) == out[2:]


def test_pairs_are_augmented_on_both_sides(tiny_bert, tiny_mlm, vectors_file):
    batched, _ = augmenters(tiny_bert, tiny_mlm, vectors_file, copies=10)
    out = batched.augment(SENTS_A, SENTS_B, np.arange(4))
    for rows in out:
        (orig_a, orig_b, copy0), copies = rows[0], rows[1:]
        assert copy0 == 0 and [c for _, _, c in copies] == list(range(1, len(copies) + 1))
        assert any(a != orig_a for a, _, _ in copies) and any(b != orig_b for _, b, _ in copies)
        assert len({(a, b) for a, b, _ in rows}) == len(rows)  # distinct


def test_replacement_rate_is_near_p():
    words = [f"w{i}" for i in range(40)]
    cands = {i: [f"x{i}"] for i in range(40)}
    params = AugmentParams(copies=200, replace_prob=0.4, candidates=1)
    copies = sample_copies(words, cands, params, np.random.default_rng(0))
    rate = np.mean([w.startswith("x") for c in copies for w in c.split()])
    assert abs(rate - 0.4) < 0.02


def test_mlm_candidates_drop_subwords_and_fall_back_to_vectors(tiny_bert, tiny_mlm, vectors_file):
    batched, _ = augmenters(tiny_bert, tiny_mlm, vectors_file)
    words = [["the", "filmmaker", "was", "good"]]  # out-of-vocabulary words are one piece ([UNK]) too
    cands = batched.candidates(words, None)["a"][0]
    assert 0 not in cands and 2 not in cands  # stop words are never replaced
    assert all(not c.startswith("##") for c in cands[3])
    assert set(cands) == {1, 3}


def run_augment(tmp_path, tiny_bert, sentiment_dir, vectors_file, tiny_mlm=None, **aug):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["stages"]["augment"] = {"copies": 4, "candidates": 5, "vectors": {"path": str(vectors_file)},
                                "masked_lm": str(tiny_mlm) if tiny_mlm else None, **aug}
    cfg = from_dict(raw)
    assert stage2_augment.run(cfg) == 0
    return cfg, Path(cfg.output_dir)


def rows(out: Path) -> list:
    import datasets
    return datasets.load_from_disk(str(out / "augmented" / "data")).to_list()


def test_stage_output_is_independent_of_shard_count(tmp_path, tiny_bert, sentiment_dir, vectors_file, tiny_mlm):
    _, one = run_augment(tmp_path / "one", tiny_bert, sentiment_dir, vectors_file, tiny_mlm, num_shards=1)
    _, five = run_augment(tmp_path / "five", tiny_bert, sentiment_dir, vectors_file, tiny_mlm, num_shards=5)
    a, b = rows(one), rows(five)
    assert a == b
    assert len({r["source_id"] for r in a}) == 96 and {r["label"] for r in a} == {0, 1}
    per_source = {}
    for r in a:
        per_source.setdefault(r["source_id"], []).append(r["copy_index"])
    assert all(v[0] == 0 and v == list(range(len(v))) for v in per_source.values())


def test_resume_redoes_only_incomplete_shards(tmp_path, tiny_bert, sentiment_dir, vectors_file):
    cfg, out = run_augment(tmp_path, tiny_bert, sentiment_dir, vectors_file, num_shards=4)
    expected = rows(out)
    shards = sorted((out / "augmented.shards").glob("shard-*"))
    stamps = {s.name: (s / "crild_stage.json").stat().st_mtime_ns for s in shards}
    shutil.rmtree(out / "augmented")
    shutil.rmtree(shards[2])  # killed while writing shard 2: only a temporary folder is left
    (out / "augmented.shards" / f".{shards[2].name}.tmp999").mkdir()
    assert stage2_augment.run(cfg) == 0
    assert rows(out) == expected
    for s in shards:
        if s != shards[2]:
            assert (s / "crild_stage.json").stat().st_mtime_ns == stamps[s.name]  # not redone
    stamps = {s.name: (s / "crild_stage.json").stat().st_mtime_ns for s in shards}
    with pytest.MonkeyPatch.context() as patch:  # crild run --force: every shard is redone, to the same data
        patch.setenv(FORCED_ENV, "1")
        assert stage2_augment.run(cfg) == 0
    assert rows(out) == expected
    assert all((s / "crild_stage.json").stat().st_mtime_ns != stamps[s.name] for s in shards)


def test_a_stop_request_is_answered_after_the_shard_under_way(tmp_path, tiny_bert, sentiment_dir, vectors_file):
    """Ctrl-C or Slurm's SIGTERM during augmentation: the stage stops after the shard it is
    writing (EXIT_PREEMPTED, nothing merged), and the same command does the other shards only,
    ending with the data an uninterrupted run writes."""
    from pipeline.errors import EXIT_PREEMPTED
    from pipeline.training.stop import StopRequest

    cfg, out = run_augment(tmp_path / "whole", tiny_bert, sentiment_dir, vectors_file, num_shards=4)
    expected = rows(out)
    raw = tiny_run_config(tmp_path / "stopped", tiny_bert, sentiment_dir)
    raw["stages"]["augment"] = {"copies": 4, "candidates": 5, "vectors": {"path": str(vectors_file)}, "num_shards": 4}
    cfg = from_dict(raw)
    assert stage2_augment.run(cfg, stop=StopRequest(after_micro_steps=2, install_handlers=False)) == EXIT_PREEMPTED
    out = Path(cfg.output_dir)
    done = sorted(p.name for p in (out / "augmented.shards").glob("shard-*") if (p / "crild_stage.json").is_file())
    assert len(done) == 2 and not (out / "augmented").exists()
    stamps = {name: (out / "augmented.shards" / name / "crild_stage.json").stat().st_mtime_ns for name in done}
    assert stage2_augment.run(cfg) == 0
    assert rows(out) == expected
    assert {name: (out / "augmented.shards" / name / "crild_stage.json").stat().st_mtime_ns for name in done} == stamps


def test_missing_vectors_file(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["stages"]["augment"] = {"vectors": {"path": str(tmp_path / "nope.txt")}}
    with pytest.raises(UserError, match="vectors file .*nope.txt' does not exist"):
        stage2_augment.run(from_dict(raw))


def test_vectors_are_read_whole_and_checked(tmp_path):
    """A word per row, finite numbers, a real .npy matrix: anything else is one line naming
    the file (and the line), never a traceback, and never words shifted against rows."""
    np.save(tmp_path / "m.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    (tmp_path / "words.txt").write_text("a\nb\nc\n")  # a final newline is not a fourth word
    vec = load_vectors(str(tmp_path / "m.npy"), str(tmp_path / "words.txt"))
    assert vec.words == ["a", "b", "c"] and vec.unit.shape == (3, 2)
    (tmp_path / "text.txt").write_text("\ufeffa 1 2\r\nb 3 4\r\n")  # a byte-order mark and CRLF lines
    assert load_vectors(str(tmp_path / "text.txt"), None).words == ["a", "b"]

    (tmp_path / "two.txt").write_text("a\nb\n")
    (tmp_path / "pickled.npy").write_bytes(b"not a matrix")
    np.save(tmp_path / "flat.npy", np.zeros(4))
    (tmp_path / "nan.txt").write_text("a 1 2\nb nan 4\n")
    (tmp_path / "latin1.txt").write_bytes(b"a 1 2\ncaf\xe9 3 4\n")
    (tmp_path / "folder").mkdir()
    for path, vocab, message in [
        ("m.npy", "two.txt", "vectors.vocab: 2 words for 3 vectors in '.*m.npy'; expected one word per row"),
        ("pickled.npy", "words.txt", "pickled.npy: not a NumPy .npy matrix of numbers \\(it holds pickled objects"),
        ("flat.npy", "words.txt", r"flat.npy: expected a 2-D matrix of numbers \(a row per word\), got shape \(4,\)"),
        ("nan.txt", None, "nan.txt: the vector of 'b' \\(row 2\\) is not finite"),
        ("latin1.txt", None, "latin1.txt:2: not UTF-8 text \\(byte 0xe9\\)"),
        ("folder", None, "vectors file '.*folder' is a folder; expected a vectors file")]:
        with pytest.raises(UserError, match=message):
            load_vectors(str(tmp_path / path), vocab and str(tmp_path / vocab))


def test_tokenizer_vocabulary_mismatch(tmp_path, tiny_bert, tiny_mlm, vectors_file):
    from transformers import BertTokenizerFast

    bad = tmp_path / "bad-mlm"
    shutil.copytree(tiny_mlm, bad)
    words = VOCAB + [f"extra{i}" for i in range(20)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(bad))
    with pytest.raises(UserError, match="tokenizer and model do not match"):
        MaskedLM(str(bad), torch.device("cpu"))


@pytest.mark.parametrize("model_type", sorted(FAMILY_TOKENIZERS))
def test_plain_encoder_is_not_a_masked_lm(family_models, model_type):
    with pytest.raises(UserError, match="no masked-LM head"):
        MaskedLM(str(family_models[model_type]), torch.device("cpu"))


@pytest.mark.parametrize("model_type", sorted(FAMILY_TOKENIZERS))
def test_a_masked_lm_of_every_family_proposes_whole_words(tmp_path, family_models, vectors_file, model_type):
    """The head crild runs at the masked positions is the model's own (same logits); the
    candidates are words that the tokenizer makes one token of, never a piece or a special
    token; and the batched structure gives what the original gives. Before, DistilBERT's,
    ELECTRA's and ModernBERT's masked LMs failed with an AttributeError, RoBERTa's and the
    SentencePiece families' split words without their word-start mark (most never reached the
    masked LM), and MPNet's proposed [SEP] and [PAD] as words."""
    from transformers import AutoTokenizer

    folder = family_models[model_type]
    mlm = MaskedLM(str(write_tiny_mlm(tmp_path / "mlm", folder)), torch.device("cpu"))
    words = "the film was good and the story was moving .".split()
    ids, types, single = mlm.inputs(words)
    x = torch.tensor([ids])
    kw = {} if types is None else {"token_type_ids": torch.tensor([types])}
    with torch.no_grad():
        torch.testing.assert_close(mlm.head(mlm.encoder(input_ids=x, **kw).last_hidden_state),
                                   mlm.model(input_ids=x, **kw).logits)
    tok = mlm.tokenizer
    for i, position in single.items():  # the token at a one-token word's position is that word
        assert tok.convert_tokens_to_string([tok.convert_ids_to_tokens(ids[position])]).strip() == words[i]
    everything = mlm._candidates(torch.randn(4, len(mlm.words)), len(mlm.words))
    assert everything[0] and all(sorted(row) == sorted(everything[0]) for row in everything)
    for word in everything[0]:
        made = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(made) == 1 and made[0] not in tok.all_special_ids, (word, made)
    student = AutoTokenizer.from_pretrained(str(folder))
    params = AugmentParams(copies=6, replace_prob=0.4, candidates=5)
    vectors = load_vectors(str(vectors_file), None)
    batched = BatchedAugmenter(student, vectors, mlm, params, 0, batch_size=3).augment(SENTS_A, SENTS_B, np.arange(4))
    assert batched == OriginalAugmenter(student, vectors, mlm, params, 0).augment(SENTS_A, SENTS_B, np.arange(4))


@pytest.mark.parametrize("model_type", sorted(FAMILY_TOKENIZERS))
def test_a_plain_encoder_is_told_from_a_masked_lm_by_its_weight_names(tmp_path, family_models, model_type):
    """The check a run makes before its first stage, without loading the weights."""
    from pipeline.models.loading import check_weights, encoder_config

    encoder = family_models[model_type]
    mlm = write_tiny_mlm(tmp_path / "mlm", encoder)
    require_mlm_head(check_weights(str(mlm), "m"), encoder_config(str(mlm), "m"), str(mlm), "m")
    with pytest.raises(UserError, match=r"m: '.*' has no masked-LM head \(no \w+\.\* weights\); a plain encoder"):
        require_mlm_head(check_weights(str(encoder), "m"), encoder_config(str(encoder), "m"), str(encoder), "m")


def test_a_masked_lm_whose_head_the_registry_does_not_name_runs_its_own_forward(tmp_path, family_models,
                                                                              vectors_file):
    """DeBERTa-v2's masked LM with ``legacy: false`` keeps its head in ``lm_predictions``, which
    also takes the word embeddings: the batched structure then takes the model's own logits at
    the masked positions, and gives what the original gives."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from pipeline.models.loading import check_weights, encoder_config

    encoder = family_models["deberta-v2"]
    folder = tmp_path / "deberta-mlm"
    config = AutoConfig.from_pretrained(str(encoder))
    config.legacy = False
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(encoder)).save_pretrained(str(folder))
    require_mlm_head(check_weights(str(folder), "m"), encoder_config(str(folder), "m"), str(folder), "m")
    mlm = MaskedLM(str(folder), torch.device("cpu"))
    assert mlm.head is None
    student = AutoTokenizer.from_pretrained(str(encoder))
    params = AugmentParams(copies=6, replace_prob=0.4, candidates=5)
    vectors = load_vectors(str(vectors_file), None)
    texts = ["a good movi , a dull story", "ca pl st movi ."]  # the tiny vocabulary's whole words: movi, ca, pl, st
    batched = BatchedAugmenter(student, vectors, mlm, params, 0, batch_size=3)
    assert batched.candidates([t.split() for t in texts], None)["a"] \
        == OriginalAugmenter(student, vectors, mlm, params, 0).candidates([t.split() for t in texts], None)["a"]
    assert all(mlm.inputs(t.split())[2] for t in texts)  # some words reach the masked LM


def test_special_and_unused_tokens_are_never_candidates(tmp_path, tiny_bert, tiny_mlm, vectors_file):
    """A masked LM whose top predictions are [SEP], [PAD], a '##' piece and an [unused] token:
    written into the text, '[SEP]' would be read back as the separator itself."""
    from transformers import AutoModelForMaskedLM, BertTokenizerFast

    folder = tmp_path / "special-mlm"
    shutil.copytree(tiny_mlm, folder)
    vocab = VOCAB[:-2] + ["##ing", "[unused0]"]  # in place of two words: the model's vocabulary size stays
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(str(folder))
    favoured = [vocab.index(t) for t in ("[SEP]", "[PAD]", "[MASK]", "[unused0]", "##ing")]
    with torch.no_grad():
        model.cls.predictions.bias[favoured] += 1000.0
    model.save_pretrained(str(folder))
    mlm = MaskedLM(str(folder), torch.device("cpu"))
    ids, segments, single = mlm.inputs(["a", "good", "film"])
    top = mlm.predict_many([(ids, segments, single[1])], m=len(favoured) + 3, batch_size=1)[0]
    assert top and not {"[SEP]", "[PAD]", "[MASK]", "[unused0]", "##ing", "ing"} & set(top)
    assert all(w.isalpha() or w in ".," for w in top)


def test_a_sentence_longer_than_the_masked_lms_positions(tiny_bert, tiny_mlm, vectors_file):
    """TinyBERT's input holds the sentence twice: past half the masked LM's positions it was an
    IndexError in the position embeddings. The words past the cut get word-vector neighbours."""
    batched, original = augmenters(tiny_bert, tiny_mlm, vectors_file)
    words = ("good film " * 30).split()  # 60 words, 123 tokens with the pair's special tokens; 64 positions
    ids, _, single = batched.mlm.inputs(words)
    assert len(ids) == 64 and 0 in single and 59 not in single
    cands = batched.candidates([words], None)["a"][0]
    assert cands == original.candidates([words], None)["a"][0] and set(cands) == set(range(60))


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_kd_phase_trains_on_augmented_data_with_stored_teacher_logits(tmp_path, tiny_bert, sentiment_dir,
                                                                      vectors_file, monkeypatch, precision):
    """The KD phase finds the logits stage 2 stored, in the precision its teacher runs in (bf16
    on a GPU by default): stored in fp32, they were computed again there."""
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "home"))  # its own caches: it counts the stored logits
    from pipeline import stage1_teacher, stage3_distill
    from pipeline.data.sources import crild_home
    from pipeline.training.stop import StopRequest

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["stages"]["augment"] = {"copies": 3, "candidates": 5, "vectors": {"path": str(vectors_file)},
                                "teacher_logits": True}
    raw["stages"]["distill"] = {"preset": "kd", "augmented_phases": ["kd"], "teacher_precision": precision,
                                "kd": {"epochs": 2, "batch_size": 8, "checkpoint_every": 50}}
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    assert stage2_augment.run(cfg) == 0
    (stored,) = (crild_home() / "tokenized").glob("*/teacher_logits-*.safetensors")
    assert stored.name.endswith("-bfloat16.safetensors") == (precision == "bf16")
    before = stored.stat().st_mtime_ns
    assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    kd = json.loads((Path(cfg.output_dir) / "student" / "train_results.json").read_text())["phases"]["kd"]
    assert kd["examples"] == len(rows(Path(cfg.output_dir))) > 96
    assert kd["teacher_forwards"] == 0
    assert list((crild_home() / "tokenized").glob("*/teacher_logits-*.safetensors")) == [stored]
    assert stored.stat().st_mtime_ns == before  # found where stage 2 put it, not recomputed


@pytest.mark.slow
def test_sigkill_after_a_shard_then_rerun_gives_the_same_data(tmp_path, tiny_bert, sentiment_dir, vectors_file,
                                                              tiny_mlm):
    """A real SIGKILL (CRILD_FAULT) after the second of four shards: the rerun keeps the two
    finished shards and produces exactly the uninterrupted run's data."""
    import os
    import subprocess
    import sys

    import yaml
    from helpers import REPO

    _, reference = run_augment(tmp_path / "ref", tiny_bert, sentiment_dir, vectors_file, tiny_mlm, num_shards=4)
    raw = tiny_run_config(tmp_path / "killed", tiny_bert, sentiment_dir)
    raw["stages"]["augment"] = {"copies": 4, "candidates": 5, "vectors": {"path": str(vectors_file)},
                                "masked_lm": str(tiny_mlm), "num_shards": 4}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, str(REPO / "pipeline" / "stage2_augment.py"), "--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(REPO), CRILD_FAULT="shard:2")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)  # set in this process by the in-process reference run
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == -9
    out = tmp_path / "killed" / "run"
    done = sorted(p.name for p in (out / "augmented.shards").glob("shard-*"))
    assert len(done) == 2 and not (out / "augmented").exists()
    env.pop("CRILD_FAULT")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "this worker has 2 to do" in proc.stderr
    assert rows(out) == rows(reference)


def test_a_vocabulary_padded_past_the_tokenizer_proposes_no_padding_rows(tmp_path, tiny_bert, vectors_file):
    """Checkpoints often pad the embedding matrix past the tokenizer (to a multiple of 8):
    those rows name no token, and are never candidates."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path / "padded-mlm"
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(VOCAB) + 5, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    with torch.no_grad():
        model.cls.predictions.bias[len(VOCAB):] += 1000.0  # the padding rows come first
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(folder))
    mlm = MaskedLM(str(folder), torch.device("cpu"))
    assert mlm.words[len(VOCAB):] == [None] * 5
    ids, segments, single = mlm.inputs(["a", "good", "film"])
    top = mlm.predict_many([(ids, segments, single[1])], m=8, batch_size=1)[0]
    assert top and all(w in VOCAB for w in top)
