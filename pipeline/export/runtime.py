"""ONNX Runtime as crild uses it: a CPU session with a stated thread count, fed the inputs
its graph has, returning logits like a PyTorch classifier's forward."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from pipeline.errors import UserError


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("stages.export: ONNX Runtime is not installed; pip install onnxruntime onnx "
                        "(tools/setup.sh does)") from None
    return ort


def session(model_file: Path, threads: int):
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle worker threads sleep instead of spinning: interleaved with PyTorch (the benchmark), spinning
    # threads would hold the cores and slow the other runtime's next call
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types for a damaged file
        raise UserError(f"{model_file}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None


def onnx_forward(sess) -> Callable[[dict], torch.Tensor]:
    """forward(batch) -> logits for a batch dict of tensors (predict_logits' interface)."""
    names = [i.name for i in sess.get_inputs()]  # an input the model ignores is pruned from the graph

    def forward(batch: dict) -> torch.Tensor:
        return torch.from_numpy(sess.run(["logits"], {n: batch[n].numpy() for n in names})[0])

    return forward
