"""Evaluation: sharded prediction, GLUE metrics, the flatness probe, results tables."""
