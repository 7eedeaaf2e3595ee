"""Encoders: loading and saving transformers models, and hooks that capture their layers."""
