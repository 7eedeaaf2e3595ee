"""A saved tokenizer cuts a text at the length crild trained and scored at, and never past
the model's positions; ``saved_max_length`` reads that limit back, as the export card states it."""
import json

from transformers import AutoConfig, AutoTokenizer

from pipeline.models.loading import save_tokenizer, saved_max_length


def test_a_saved_tokenizer_cuts_at_the_scored_length_and_within_the_positions(tmp_path, tiny_bert):
    tokenizer, config = AutoTokenizer.from_pretrained(str(tiny_bert)), AutoConfig.from_pretrained(str(tiny_bert))
    assert tokenizer.model_max_length > config.max_position_embeddings == 64  # MiniLM's tokenizer says 512
    for max_length, expected in ((32, 32), (None, 64), (100, 64)):
        folder = tmp_path / f"cut-{max_length}"
        save_tokenizer(tokenizer, config, folder, max_length)
        assert saved_max_length(folder) == expected == AutoTokenizer.from_pretrained(str(folder)).model_max_length
        ids = AutoTokenizer.from_pretrained(str(folder))("word " * 200, truncation=True)["input_ids"]
        assert len(ids) == expected
    assert tokenizer.model_max_length > 64  # the tokenizer saved is left as it was


def test_a_tokenizer_without_a_real_limit_reads_as_none(tmp_path):
    assert saved_max_length(tmp_path) is None  # no tokenizer_config.json
    for value in (int(1e30), None, "512", 0, [3]):  # transformers writes 1e30 for no limit
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": value}))
        assert saved_max_length(tmp_path) is None, value
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    assert saved_max_length(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    assert saved_max_length(tmp_path) is None
