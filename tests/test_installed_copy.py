"""crild installed from a wheel (``pip install .``, not a clone's editable install) finds the
DeepSpeed configs and job scripts that its settings name by their place in the repository
(``ds_configs/zero0_fp32.json``, ``jobs/crild_stage.sbatch``): setup.py ships them in the
package. Before, an installed copy run outside a clone refused every default configuration."""
import subprocess
import sys
import zipfile

import yaml
from helpers import REPO, crild_env, tiny_run_config


def test_a_wheel_ships_the_files_a_configuration_names_and_an_installed_copy_finds_them(tmp_path, tiny_bert,
                                                                                      sentiment_dir):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("crild-*.whl"))
    tracked = subprocess.run(["git", "ls-files", "ds_configs", "jobs"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("pipeline/bundled/") for name in archive.namelist()
                   if name.startswith("pipeline/bundled/")}
        assert {f for f in tracked if not f.endswith(".gitignore")} <= shipped, set(tracked) - shipped
        for name in tracked:
            assert archive.read(f"pipeline/bundled/{name}") == (REPO / name).read_bytes(), name
    target = tmp_path / "installed"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # no clone here: the files are the installed copy's
    elsewhere.mkdir()
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)  # deepspeed_config: ds_configs/zero0_fp32.json
    raw["stages"]["distill"] = {"kd": {"deepspeed_config": "ds_configs/zero2_bf16.json"}}
    raw["pipeline"] = ["teacher", "distill"]
    (elsewhere / "run.yaml").write_text(yaml.safe_dump(raw))
    env = {**crild_env(), "PYTHONPATH": str(target)}
    probe = ("import pipeline, pipeline.launch.submit as s, pipeline.training.ds_files as d; "
             "print(pipeline.__file__); print(s.STAGE_SCRIPT); print(d.read_ds_text('ds_configs/zero2_bf16.json', 'x')[0])")
    found = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    package, stage_script, ds_config = found.stdout.split()
    assert package.startswith(str(target)) and stage_script.startswith(str(target)) and ds_config.startswith(str(target))
    checked = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "run.yaml"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert yaml.safe_load(checked.stdout)["deepspeed_config"] == "ds_configs/zero0_fp32.json"
