"""Training: the shared loop, DeepSpeed engines and configs, checkpoints, TensorBoard."""
