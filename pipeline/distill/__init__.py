"""Distillation: the loss math, registered terms, the paper's presets, the mixup view and
consistency term, the frozen teacher, and one phase of training built from them."""
