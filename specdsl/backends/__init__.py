"""Backends: leaves of the package that import torch (and onnx). Nothing in the core imports them."""
