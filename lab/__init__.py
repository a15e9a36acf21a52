"""bitlab: image-tokenizer ablations after Infinity (bitwise tokens) and VAR (next-scale prediction)."""

__version__ = "0.1.0"
