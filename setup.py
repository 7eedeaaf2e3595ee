from pathlib import Path

from setuptools import find_packages, setup

# the DeepSpeed configs, run configurations and job scripts that crild's settings name by their
# place in this repository (ds_configs/zero2_bf16.json, jobs/demo.yaml, jobs/crild_stage.sbatch):
# shipped inside the package too, so that an installed copy (pip install ., a wheel) finds them
# where a clone does (pipeline/schema/paths.py, bundled)
BUNDLED = {"pipeline.bundled.ds_configs": "ds_configs", "pipeline.bundled.jobs": "jobs",
           "pipeline.bundled.jobs.studies": "jobs/studies"}

setup(
    name="crild",
    version="0.1.0",
    description="DeepSpeed pipeline that compresses encoder language models by CR-ILD distillation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*"]) + list(BUNDLED),
    package_dir=BUNDLED,
    package_data={"pipeline.bundled.ds_configs": ["*.json"], "pipeline.bundled.jobs": ["*.yaml", "*.sbatch"],
                  "pipeline.bundled.jobs.studies": ["*.yaml"]},
    install_requires=[
        "torch>=2.1",  # lower bound only: GPU users bring their own build
        "deepspeed>=0.14",
        "transformers>=4.45",
        "accelerate>=0.30",  # transformers' DeepSpeed integration (ZeRO-3 teachers)
        "datasets>=2.19",
        "pyarrow>=12",  # Parquet splits and vocabularies (datasets needs it too)
        "sentencepiece",
        "tensorboard",
        "pyyaml",
        "numpy",
        "scipy",
        "scikit-learn",
        "tqdm",
        "safetensors",
        "pydantic>=2.6",  # configuration schemas (DeepSpeed depends on it too)
        "onnx",  # the export stage: ONNX models, INT8 quantization
        "onnxruntime",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3.5", "ruff==0.17.6", "hypothesis>=6.100",
                "filelock>=3.12"],
        "report": ["matplotlib", "markdown"],  # plots; index.html
        "bench": ["textbrewer==0.2.1.post1"],  # the peer tools/bench_distill.py compares against
    },
    entry_points={"console_scripts": ["crild=pipeline.cli:main"]},
)
