"""A folder given as a model that is not one says what it is: a folder of model folders (a
Trainer's output_dir with its checkpoints, a crild run folder) names those inside it."""
import shutil

import pytest

from pipeline.errors import UserError
from pipeline.models.loading import resolve_model


def test_a_folder_of_model_folders_names_them(tmp_path, tiny_bert):
    for name in ("checkpoint-1000", "checkpoint-500"):
        shutil.copytree(tiny_bert, tmp_path / "trainer_out" / name)
    (tmp_path / "trainer_out" / "runs").mkdir()  # a folder that is no model: not named
    with pytest.raises(UserError) as err:
        resolve_model(str(tmp_path / "trainer_out"), "teacher.model")
    assert str(err.value) == (f"teacher.model: model folder '{tmp_path / 'trainer_out'}' has no config.json; the model "
                              f"folders are inside it (checkpoint-500/, checkpoint-1000/): give one of them")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        resolve_model(str(tmp_path / "empty"), "teacher.model")
    assert str(err.value) == f"teacher.model: model folder '{tmp_path / 'empty'}' has no config.json"
    assert resolve_model(str(tmp_path / "trainer_out" / "checkpoint-500"), "teacher.model").endswith("checkpoint-500")
