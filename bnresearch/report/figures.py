"""PNG figures of a sweep: learning curves per variant with a band over seeds, and final accuracy
against each swept numeric field (batch size, learning rate, ...)."""
import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bnresearch.report.runs import read_metrics, series  # noqa: E402
from bnresearch.report.table import Variant, variant_row  # noqa: E402
from bnresearch.sweep.naming import short_labels, unique_names  # noqa: E402

_DPI = 120


def _colors(count: int):
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(index % cmap.N) for index in range(count)]


def _band(curves: list[list[tuple[int, float]]]):
    """Steps, mean and std over the curves that have a finite value at each step."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step))
    values = [by_step[step] for step in steps]
    mean = np.array([np.mean(v) for v in values])
    std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return steps, mean, std


def learning_curves(variants: list[Variant], sweep_dir, path) -> None:
    """Eval accuracy and train loss against step; the band is ± one std over seeds."""
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    for variant, color in zip(variants, _colors(len(variants))):
        metrics = [read_metrics(f"{sweep_dir}/{name}") for name in variant.point_names]
        for axis, key in ((accuracy_axis, "eval/accuracy"), (loss_axis, "train/loss")):
            steps, mean, std = _band([series(m, key) for m in metrics])
            if steps.size == 0:
                continue
            label = f"{variant.name} ({len(metrics)} seed{'s' * (len(metrics) > 1)})"
            axis.plot(steps, mean, color=color, label=label,
                      marker="o" if steps.size < 12 else None, markersize=3)
            axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    accuracy_axis.set(title="eval accuracy", xlabel="step", ylabel="accuracy")
    loss_axis.set(title="train loss", xlabel="step", ylabel="loss (log scale)", yscale="log")
    for axis in (accuracy_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _plain_log_labels(loss_axis.yaxis)
    handles, labels = accuracy_axis.get_legend_handles_labels()
    if not handles:
        handles, labels = loss_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False,
                  fontsize="small")
    figure.suptitle("mean over seeds, band: ± one standard deviation", fontsize="small")
    rows = math.ceil(len(labels) / 4)
    figure.tight_layout(rect=(0, 0.06 * rows, 1, 0.97))
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def _plain_log_labels(axis) -> None:
    """0.5, 1, 2 rather than 5x10^-1: minor ticks labelled too when the range is within a decade."""
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    low, high = axis.get_view_interval()
    if low > 0 and high / low < 10:
        axis.set_minor_formatter(plain)


def numeric_fields(variants: list[Variant]) -> list[str]:
    """Swept fields that are axes: all values numbers (not booleans), and at least two variants
    that differ in this field alone. A number that only comes with one variant (one
    normalization's own lr, say) is part of that variant, not something to plot against."""
    fields = []
    for field in dict.fromkeys(f for v in variants for f in v.values):
        values = [v.values[field] for v in variants]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            continue
        settings_of_the_rest = {}
        for variant in variants:
            rest = repr(sorted((k, repr(x)) for k, x in variant.values.items() if k != field))
            settings_of_the_rest.setdefault(rest, set()).add(variant.values[field])
        if any(len(settings) > 1 for settings in settings_of_the_rest.values()):
            fields.append(field)
    return fields


def _scale(values) -> dict:
    """Log axes for positive values spanning a factor of 4 or more; base 2 for powers of two."""
    values = [float(v) for v in values]
    if min(values) <= 0 or max(values) / min(values) < 4:
        return {"value": "linear"}
    powers_of_two = all(v == 2 ** round(math.log2(v)) for v in values)
    return {"value": "log", "base": 2 if powers_of_two else 10}


def final_accuracy_against(variants: list[Variant], field: str, path) -> None:
    """Final eval accuracy (mean ± std over seeds) against `field`, one line per other setting."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    others_of = {}
    for variant in variants:
        others = {k: v for k, v in variant.values.items() if k != field}
        key = repr(sorted(others.items()))
        others_of[key] = others
        row = variant_row(variant)
        lines.setdefault(key, []).append(
            (variant.values[field], row["final_accuracy_mean"], row["final_accuracy_std"]))
    names = unique_names(list(others_of.values()))
    label = short_labels(f for v in variants for f in v.values)[field]
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for (key, points), name, color in zip(lines.items(), names, _colors(len(lines))):
        points.sort()
        x = [p[0] for p in points]
        y = np.array([p[1] for p in points])
        err = np.nan_to_num(np.array([p[2] for p in points]))
        axis.errorbar(x, y, yerr=err, color=color, marker="o", capsize=3,
                      label=name if len(lines) > 1 else None)
    scale = _scale([v.values[field] for v in variants])
    axis.set_xscale(scale.pop("value"), **scale)
    if axis.get_xscale() == "log":
        _plain_log_labels(axis.xaxis)
    axis.set(title=f"final eval accuracy against {label}", xlabel=label,
             ylabel="final eval accuracy")
    axis.grid(alpha=0.3, which="both")
    if len(lines) > 1:
        axis.legend(fontsize="small", frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)

