"""Training: the LightningModules of the two stages (``modules.py``: tokenizer; ``generator.py``: generator)
and their optimiser (``optim.py``)."""
