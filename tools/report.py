"""The paper's method comparison: ``python tools/report.py [options]`` is ``crild study
[options]`` (see ``pipeline/study/command.py``), kept for the commands in the README and the
study files.

    python tools/report.py                                  # jobs/studies/offline.yaml
    python tools/report.py --study my_study.yaml --collect-only
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["study", *sys.argv[1:]])
