"""Launching stages: chaining them locally, the launcher command, Slurm jobs and signals."""
