"""Deployment: the run's models as ONNX folders that ONNX Runtime loads as they are, proved
equal to PyTorch, optionally quantized to INT8, and timed against the teacher."""
