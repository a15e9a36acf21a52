"""Runtime: where files go and how they are written (``files.py``), one lock per run (``runlock.py``),
the machine's speed settings (``machine.py``), the Trainer's pieces (``trainer.py``), loggers, signals,
input guards and quiet output. Nothing here reads a whole config."""
