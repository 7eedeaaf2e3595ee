"""INT8 dynamic quantization with ONNX Runtime: weights stored as int8, activations
quantized on the fly; the folder keeps its tokenizer and config."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import UserError
from pipeline.export.onnx_export import DATA_SUFFIX, ONNX_FILE
from pipeline.export.runtime import onnxruntime

INT8_SUFFIX = "-int8"  # export/<name>-int8: the INT8 copy of export/<name>


def check_int8_names(names: list[str], quantized: list[str]) -> None:
    """Each model's folder under export/ is its name, and an INT8 copy's is its model's name
    and ``-int8``: a listed model of that name would share its folder with the copy, one
    export written over the other."""
    for name in quantized:
        if name + INT8_SUFFIX in names:
            raise UserError(f"stages.export.models: the model named '{name}{INT8_SUFFIX}' has the folder name of "
                            f"{name}'s INT8 copy (export/{name}{INT8_SUFFIX}); rename its folder, or set "
                            f"stages.export.quantize: false")


def quantize_folder(source: Path, out: Path) -> None:
    onnxruntime()  # one line if it is missing
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    prepared = out / "prepared.onnx"  # shapes inferred and the graph optimised first, as ONNX Runtime advises
    # a graph over protobuf's 2 GiB keeps its weights in model.onnx.data; so do its prepared and INT8 copies
    large = (source / (ONNX_FILE + DATA_SUFFIX)).exists()
    quant_pre_process(str(source / ONNX_FILE), str(prepared), skip_symbolic_shape=True, save_as_external_data=large,
                      all_tensors_to_one_file=True, external_data_location=prepared.name + DATA_SUFFIX)
    quantize_dynamic(str(prepared), str(out / ONNX_FILE), weight_type=QuantType.QInt8, use_external_data_format=large)
    for temporary in (prepared, out / (prepared.name + DATA_SUFFIX)):
        temporary.unlink(missing_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(ONNX_FILE):
            shutil.copy2(path, out / path.name)
