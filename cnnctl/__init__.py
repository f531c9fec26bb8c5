"""cnnctl: train convolutional neural networks described in YAML."""

__version__ = "0.1.0"
