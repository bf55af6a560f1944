"""Comparing checkpoints: diff, the CI checks, key matching against a model or a reference."""
