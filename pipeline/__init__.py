"""crild: CR-ILD distillation of BERT-family encoders on DeepSpeed."""
__version__ = "0.1.0"
