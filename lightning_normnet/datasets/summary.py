"""What a prepared dataset holds, in one table row: printed by `prepare`, written and logged by runs."""
from __future__ import annotations

import numpy as np

COLUMNS = ["set", "role", "cases", "skipped", "in-plane mm", "z mm", "slices", "lesion mL"]


def _span(values, digits: int = 2) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if np.isclose(low, high) else f"{low:.{digits}f}-{high:.{digits}f}"


def summary_row(name: str, role: str, index: dict) -> list[str]:
    """One row of COLUMNS; lesion volume as mean (min-max) in the original grid."""
    cases = index["cases"]
    spacing = np.array([c["spacing"] for c in cases], dtype=float)
    slices = [c["slices"] for c in cases]
    lesions = [c["lesion_ml"] for c in cases if c.get("lesion_ml") is not None]
    lesion = f"{np.mean(lesions):.1f} ({_span(lesions, 1)})" if lesions else "-"
    return [name, role, str(len(cases)), str(len(index["skipped"])), _span(spacing[:, :2].ravel()),
            _span(spacing[:, 2]), f"{sum(slices)} ({_span(slices, 0)})", lesion]


def format_summary(rows: list[list[str]]) -> str:
    """A markdown table of summary rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
