"""``make bench``: performance measured side by side in one process. ``common.py`` holds the measuring; the
parts are ``parts.py`` (quantizers, heads, sampling, generator training and the ``PARTS`` table),
``training.py`` (both stages' loops) and ``machine.py`` (precision and process layout on this CPU)."""
