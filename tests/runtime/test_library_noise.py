"""The library messages crild keeps off its logs are the known ones only."""
import logging

import pytest

from pipeline.runtime.deepspeed_noise import import_deepspeed


def test_torch_extension_builders_no_cuda_runtime_warning_is_dropped_and_nothing_else(caplog):
    """A CUDA build of torch on a machine without a GPU (pip's default torch on Linux) made
    torch's extension builder, which DeepSpeed imports, warn "No CUDA runtime is found" in
    every ZeRO-3 stage, where crild runs on the CPU by design. The filter is in place before
    DeepSpeed is imported, on the logger torch's module logs to."""
    import_deepspeed()
    import_deepspeed()  # a second import adds no second filter
    from deepspeed.utils import logger as deepspeed_logger  # its own handler, not propagated

    builder = logging.getLogger("torch.utils.cpp_extension")
    assert len(builder.filters) == 1 and len(deepspeed_logger.filters) == 1
    deepspeed_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            builder.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
            builder.warning("Error checking compiler version for c++")
            deepspeed_logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator")
            deepspeed_logger.warning("a warning of DeepSpeed's own")
    finally:
        deepspeed_logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["Error checking compiler version for c++",
                                                        "a warning of DeepSpeed's own"]


def _python(code: str) -> list[str]:
    """The words ``code`` prints, run as a fresh crild process that was told nothing of datasets."""
    import subprocess
    import sys

    from helpers import REPO, crild_env

    env = crild_env()
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "DATASETS_VERBOSITY"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.parametrize("first", ["quiet", "import"])
def test_datasets_is_quiet_whether_imported_before_or_after(first):
    """A stage imports datasets before it quiets the libraries; crild run's start-up checks
    quiet them and may never import it. Either way its progress bars and info lines are off."""
    steps = ["from pipeline.models.loading import quiet_libraries", "quiet_libraries()",
             "print('datasets' in sys.modules)", "import datasets"]
    if first == "import":
        steps = ["import datasets", "datasets.enable_progress_bars()", *steps]
    out = _python("\n".join(["import logging, sys", *steps,
                             "print(datasets.is_progress_bar_enabled(), "
                             "datasets.logging.get_verbosity() == logging.ERROR)"]))
    assert out == [str(first == "import"), "False", "True"]


def test_the_start_up_checks_of_a_run_on_a_task_in_a_folder_load_no_datasets(tmp_path, tiny_bert, sentiment_dir):
    """datasets (with pandas and pyarrow: 0.7 s of CPU) is not imported by crild run's checks
    before a folder task's first stage: they read the files themselves."""
    import yaml
    from helpers import tiny_run_config

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", "distill"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    out = _python("\n".join([
        "import sys", "from pipeline.config import load_config", "from pipeline.launch.preflight import check_stages",
        f"cfg = load_config({str(tmp_path / 'run.yaml')!r}, [])", "check_stages(cfg, ['teacher', 'distill'], 1)",
        "print('transformers' in sys.modules, 'datasets' in sys.modules)"]))
    assert out == ["True", "False"]
