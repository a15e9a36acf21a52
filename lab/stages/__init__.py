"""Stages: one run of one experiment. ``common.py`` is the skeleton both stages share; ``tokenizer.py`` and
``generator.py`` are the stages; ``run.py`` picks one from ``stage:``."""
