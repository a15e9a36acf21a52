"""The command line's subcommands beyond ``run`` (``lab/__main__.py``): ``list`` and ``--dry-run`` (``info.py``),
``compare``, ``sample``, ``bench``, ``noise``. Each imports its heavy work only when it runs."""
