"""crild: CR-ILD distillation of encoder language models on DeepSpeed."""
__version__ = "0.1.0"
