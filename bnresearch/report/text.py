"""Plain-text formatting shared by the status view and the report: numbers, durations, tables."""

import math


def number(value, digits: int = 4) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def mean_std(mean, std, digits: int = 4) -> str:
    if mean is None or math.isnan(mean):
        return ""
    return number(mean, digits) + (
        "" if std is None or math.isnan(std) else f" ± {number(std, digits)}"
    )


def duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns aligned with two spaces between; columns in `right` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        ]
    )
