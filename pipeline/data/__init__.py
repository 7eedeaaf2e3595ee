"""Data: the task registry, readers for every source, the overfitting stress settings, the
tokenized cache, batching, the offline tasks and TinyBERT's augmentation."""
