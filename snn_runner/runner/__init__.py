"""Runs: the training loop and the compiled step functions it drives."""
