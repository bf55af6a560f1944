"""ckpttool: read, scan, convert and check PyTorch checkpoints without running code from them."""

__version__ = "0.1.0"
