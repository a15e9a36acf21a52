"""Core: what every layer uses and that needs nothing of bitlab: the component registry and the one
config error (``registry.py``), number formatting for reports (``numfmt.py``), statistics for verdicts (``stats.py``)."""
