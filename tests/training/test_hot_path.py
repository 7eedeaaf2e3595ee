"""What the training loop does every micro-step reads nothing back from the device: its
bookkeeping is run on PyTorch's meta device, where any read of a device value on the host
fails (as it would synchronise on a GPU). The reads happen where the loop synchronises
anyway: at log points, checkpoints and the end."""
import pytest
import torch

from pipeline.training.trainer import _FirstNonFinite, _LogWindow

META = torch.device("meta")


def test_the_non_finite_flag_and_the_log_window_stay_on_the_device():
    flag, window = _FirstNonFinite(), _LogWindow()
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    for micro in range(3):
        total = torch.empty((), device=META)
        flag.note(total, micro)
        window.add(total, {"qkv_relation": torch.empty((), device=META), "lambda": torch.tensor(0.7)}, batch)
    assert flag.step.device == META and window.sums["loss"].device == META
    assert window.samples == 12 and window.tokens == 96  # counted from the host's copy of the batch
    with pytest.raises((RuntimeError, NotImplementedError)):
        flag.read()  # the read at a log point is the one that waits
