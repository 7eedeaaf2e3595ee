"""tools/demo_seeds.py: the demo's multi-seed claim (student beats the no-teacher baseline by
more than two standard errors) is computed from the seeds' eval results, paired by seed."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("demo_seeds", REPO / "tools" / "demo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(seed, student, baseline, wall=None):
    return {"seed": seed, "wall_s": wall, "teacher": {"dev": 0.80, "test": 0.80},
            "student": {"dev": student, "test": student}, "student_finetuned": {"dev": baseline, "test": baseline}}


def test_paired_differences_and_the_two_standard_error_rule(tmp_path):
    tool = _tool()
    steady = [_row(42, 0.79, 0.77, 770), _row(43, 0.785, 0.77), _row(44, 0.80, 0.78)]
    t = tool.paired(steady, "test")
    assert t["diffs"] == pytest.approx([2.0, 1.5, 2.0]) and t["mean"] == pytest.approx(11 / 6)
    assert t["se"] == pytest.approx(0.2886751 / 3 ** 0.5, rel=1e-5) and t["held"]  # sd / sqrt(n)
    noisy = [_row(42, 0.79, 0.77), _row(43, 0.76, 0.77), _row(44, 0.80, 0.78)]  # +2, -1, +2: mean 1, se 1
    assert not tool.paired(noisy, "test")["held"]
    assert tool.paired(steady[:1], "test")["se"] is None and not tool.paired(steady[:1], "test")["held"]

    tool.summarise(steady, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| 42 | 80.00 | 80.00 | 79.00 | 79.00 | 77.00 | 77.00 | 770 |" in text
    assert "| 43 | 80.00 | 80.00 | 78.50 | 78.50 | 77.00 | 77.00 | - |" in text
    assert "- test: +2.00, +1.50, +2.00; mean +1.83 ± 0.17 (more than two standard errors above zero)" in text
    assert json.loads((tmp_path / "summary.json").read_text())["paired"]["test"]["held"] is True
