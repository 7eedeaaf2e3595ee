"""The library messages crild keeps off its logs are the known ones only."""
import logging

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
