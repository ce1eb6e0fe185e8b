"""Pieces shared by every example family: optimizers by name, logs, checkpoints, reports."""
