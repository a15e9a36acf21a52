"""Generation: the scale loop in both directions: teacher forcing under a self-correction strategy
(``correction.py``, training) and sampling with a KV cache and guidance (``sampling.py``, inference)."""
