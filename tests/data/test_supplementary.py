"""Supplementary-task inputs: never the target's own training rows, and unlabelled corpora
(the Rotten Tomatoes plot sentences) usable as supplements but not as target tasks."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from pipeline.config import from_dict
from pipeline.data.sources import UNLABELLED, load_split
from pipeline.data.stress import apply_settings
from pipeline.data.supplementary import supplementary_data
from pipeline.data.tasks import get_task
from pipeline.errors import UserError


def target_and_config(data_dir, supplement: dict, **task):
    cfg = from_dict({"seed": 5, "task": {"name": "rotten_tomatoes", "data_dir": str(data_dir), **task},
                     "stages": {"distill": {"supplementary": [supplement]}}})
    spec = get_task("rotten_tomatoes")
    return cfg, apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)


@pytest.mark.parametrize("ratio,expected", [(0.5, 20), (10.0, 56)])  # 96 rows, 40 the target's: 56 others
def test_the_targets_own_file_supplies_only_its_other_rows(tiny_bert, sentiment_dir, ratio, expected):
    supplement = {"task": {"name": "rotten_tomatoes", "data_dir": str(sentiment_dir)}, "ratio": ratio}
    cfg, target = target_and_config(sentiment_dir, supplement, few_sample=40)
    ds = supplementary_data(cfg, AutoTokenizer.from_pretrained(str(tiny_bert)), target, regression=False)
    ids = np.array(ds["example_id"])
    assert len(ids) == expected and len(set(ids)) == expected
    assert not np.isin(ids, target.ids).any()
    assert set(ds["label"]) == {UNLABELLED}


def test_the_targets_whole_training_set_as_its_supplement_is_one_line(tiny_bert, sentiment_dir):
    supplement = {"task": {"name": "rotten_tomatoes", "data_dir": str(sentiment_dir)}}
    cfg, target = target_and_config(sentiment_dir, supplement)
    with pytest.raises(UserError, match=r"^stages.distill.supplementary\[0\].task: the target's own training set"):
        supplementary_data(cfg, AutoTokenizer.from_pretrained(str(tiny_bert)), target, regression=False)


def test_unlabelled_plot_sentences_are_a_supplement_not_a_task(tmp_path, tiny_bert, sentiment_dir):
    plot = tmp_path / "plot"
    plot.mkdir()
    (plot / "train.jsonl").write_text("".join(json.dumps({"sentence": f"a film about {w} ."}) + "\n"
                                              for w in ("dogs", "cats", "a bank robbery", "space")))
    supplement = {"task": {"name": "rotten_tomatoes_plot", "data_dir": str(plot)}, "ratio": 0.05}
    cfg, target = target_and_config(sentiment_dir, supplement, few_sample=40)
    ds = supplementary_data(cfg, AutoTokenizer.from_pretrained(str(tiny_bert)), target, regression=False)
    assert len(ds) == 2 and set(ds["label"]) == {UNLABELLED}
    with pytest.raises(UserError, match="task.name: 'rotten_tomatoes_plot' is unlabelled text"):
        from_dict({"task": {"name": "rotten_tomatoes_plot", "data_dir": str(plot)}})
