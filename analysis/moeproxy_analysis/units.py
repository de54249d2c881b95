"""Human-readable numbers for tables and axis labels (the CSV keeps raw SI values)."""

import math


def is_nan(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def time_unit(seconds_max):
    """(scale, unit) so that the largest value reads between 1 and 1000."""
    if seconds_max >= 1.0:
        return 1.0, "s"
    if seconds_max >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


def fmt_time(s):
    if is_nan(s):
        return "n/a"
    if s == 0:
        return "0 s"
    scale, unit = time_unit(abs(s))
    return f"{s * scale:.3g} {unit}"


def bytes_unit(b_max):
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if b_max >= scale:
            return float(scale), unit
    return 1.0, "B"


def fmt_bytes(b):
    if is_nan(b):
        return "n/a"
    scale, unit = bytes_unit(abs(b))
    return f"{b / scale:.3g} {unit}" if unit != "B" else f"{int(b)} B"


def fmt_rate(x):
    if is_nan(x):
        return "n/a"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g} M"
    if abs(x) >= 1e3:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def fmt_fraction(x, digits=1):
    if is_nan(x):
        return "n/a"
    if 0 < abs(x) < 0.01:
        return f"{x * 100:.2g} %"  # keep small but nonzero fractions visible
    return f"{x * 100:.{digits}f} %"


def fmt_number(x):
    if is_nan(x):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"
