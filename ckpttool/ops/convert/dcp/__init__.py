"""Converting into and out of distributed checkpoints (DCP)."""
