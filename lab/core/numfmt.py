"""Numbers for reports: digits chosen by magnitude, one number of decimals per column, thousands separators,
never scientific notation (no ``5.28e+05`` beside ``1548.0``) and never ``± 0`` from a single seed."""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

SIGNIFICANT = 4
MAX_DECIMALS = 6


def decimals_for(values: Iterable[float | None], significant: int = SIGNIFICANT) -> int:
    """Decimals that give the largest |value| ``significant`` significant digits (0 from 1,000 up): one number
    of decimals for a whole column, so its values line up."""
    mags = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not mags:
        return 0
    return max(0, min(MAX_DECIMALS, significant - 1 - math.floor(math.log10(max(mags)))))


def fmt(x: float | None, decimals: int) -> str:
    """``x`` with ``decimals`` decimals and thousands separators; a nonzero value that would print as 0 prints as
    the bound it is under (``< 0.0001``, ``> -0.0001``); None or NaN prints as an empty string."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and round(abs(x), decimals) == 0:
        bound = f"{10 ** -decimals:.{decimals}f}" if decimals else "1"
        return f"> -{bound}" if x < 0 else f"< {bound}"
    return f"{x + 0.0:,.{decimals}f}"  # + 0.0: no "-0"


def fmt_auto(x: float | None, significant: int = SIGNIFICANT) -> str:
    """One number on its own (not in a column)."""
    return fmt(x, decimals_for([x] if x is not None else [], significant))


def fmt_mean_sd(mean: float, sd: float | None, n: int, decimals: int, n_expected: int | None = None) -> str:
    """``mean ± sd`` with the column's ``decimals`` (more for an sd that would round to 0); ``(n seeds)`` when n
    differs from the row's count ``n_expected`` (or none is given); a single value says "1 seed", never "± 0"."""
    if n <= 1 or sd is None:
        return f"{fmt(mean, decimals)} (1 seed)"
    sd_decimals = decimals if sd == 0 else max(decimals, min(MAX_DECIMALS, -math.floor(math.log10(sd))))
    text = f"{fmt(mean, decimals)} ± {fmt(sd, sd_decimals)}"  # the sd keeps one significant digit
    return text if n_expected is not None and n == n_expected else f"{text} ({n} seeds)"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}"


def as_number(v: Any) -> float | None:
    """A finite float from a table cell, else None (empty, non-numeric, bool, NaN, inf)."""
    if isinstance(v, bool) or v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def short_value(value: Any) -> str:
    """A value as a run-directory label part: dicts and lists joined, floats in their shortest form."""
    if isinstance(value, Mapping):
        return "-".join(short_value(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return "x".join(short_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def slug(text: str) -> str:
    """``text`` as a safe file-name part (anything else becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-") or "default"


def fmt_duration(s: float) -> str:
    """Seconds as ``1h05m`` or ``4m07s``."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
