"""What is in a checkpoint: the inspect report, per-tensor statistics, optimizer state."""
