"""Notes for stages run on their own (``crild run --only``, ``crild <stage>``, a stage
script): the earlier outputs they read that are stale for the configuration. A full
``crild run`` redoes those first; a stage run on its own reads them as they are, and says so."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig, stage_config
from pipeline.errors import UserError
from pipeline.outputs.manifest import is_complete, recorded_fingerprint
from pipeline.stages import STAGES, stage_fingerprints


def stale_before(cfg: RunConfig, only: list[str], how: str) -> list[str]:
    """Notes for a run of ``only`` stages (``how``: ``--only export``, ``crild export``): the
    run's stages whose outputs they read (``Stage.reads``) and that are complete but stale
    (written for another configuration or other inputs). The stages run read them as they
    are, where ``crild run`` would redo them first."""
    read = {name for stage in only for name in STAGES[stage].reads(stage_config(cfg, stage))}
    notes = []
    for name in cfg.pipeline:
        if name not in read or name in only:
            continue
        stage_cfg = stage_config(cfg, name)
        folder = Path(cfg.output_dir) / STAGES[name].output(stage_cfg)
        if not is_complete(folder):
            continue
        try:
            current = stage_fingerprints(stage_cfg, name)
        except UserError:  # an input of that stage is gone (a DeepSpeed config, a data folder): not this run's concern
            continue
        if recorded_fingerprint(folder) not in current:
            notes.append(f"crild: note: {how}: {name}'s output {folder} is stale (written for another "
                         f"configuration or other inputs) and is used as it is; crild run redoes {name} first")
    return notes
