"""Sweeps and studies: a suite's plan (``plan.py``), its runs (``sweep.py``), its tables, verdicts and plots
(``report.py``, ``verdicts.py``, ``plots.py``), the findings computed from published results (``findings.py``)
and the evaluation's noise study (``noise.py``)."""
