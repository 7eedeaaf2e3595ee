"""INT8 dynamic quantization with ONNX Runtime: weights stored as int8, activations
quantized on the fly; the folder keeps its tokenizer and config."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.export.onnx_export import ONNX_FILE
from pipeline.export.runtime import onnxruntime


def quantize_folder(source: Path, out: Path) -> None:
    onnxruntime()  # one line if it is missing
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    prepared = out / "prepared.onnx"  # shapes inferred and the graph optimised first, as ONNX Runtime advises
    quant_pre_process(str(source / ONNX_FILE), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out / ONNX_FILE), weight_type=QuantType.QInt8)
    prepared.unlink()
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(ONNX_FILE):
            shutil.copy2(path, out / path.name)
