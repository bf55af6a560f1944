"""Writing a checkpoint's weights in another format: safetensors, .pth, DCP."""
