"""PNG figures of a sweep: learning curves per variant with a band over seeds, final accuracy
against each swept numeric field (batch size, learning rate, ...), and the probes' measurements
where the runs logged them (landscape, internal covariate shift, activation statistics)."""

import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bnresearch.report.naming import short_labels, unique_names, value_text  # noqa: E402
from bnresearch.report.runs import epochs_at, read_metrics, series  # noqa: E402
from bnresearch.report.table import Variant, variant_row  # noqa: E402

_DPI = 120


def _colors(count: int):
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(index % cmap.N) for index in range(count)]


# Above this many variants one figure row holds too many lines to tell apart: the learning
# curves become small multiples, one row per value of a swept number (the batch size, say).
_MAX_LINES = 10


def _band(curves: list[list[tuple[float, float]]]):
    """x, mean and std over the curves that have a finite value at each x."""
    by_x: dict[float, list[float]] = {}
    for curve in curves:
        for x, value in curve:
            if math.isfinite(value):
                by_x.setdefault(x, []).append(value)
    xs = np.array(sorted(by_x))
    values = [by_x[x] for x in xs]
    mean = np.array([np.mean(v) for v in values])
    std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return xs, mean, std


def _in_epochs(metrics: list[dict], curve: list[tuple[int, float]]):
    """`curve` against the epochs trained at its steps (see epochs_at)."""
    epochs = epochs_at(metrics, [step for step, _ in curve])
    return [(epoch, value) for epoch, (_, value) in zip(epochs, curve)]


def _examples_per_step_differ(all_metrics: list[list[dict]]) -> bool:
    """Whether steps are not comparable between or within runs: they logged several batch sizes
    (a batch-size sweep or schedule), and all logged their epochs, the common clock then."""
    sizes = {value for metrics in all_metrics for _, value in series(metrics, "train/batch_size")}
    return len(sizes) > 1 and all(series(metrics, "train/epoch") for metrics in all_metrics)


def _facets(variants: list[Variant]) -> tuple[str | None, list[tuple[object, list[Variant]]]]:
    """(the faceting field, [(its value, the variants with it)]): one facet of all variants,
    unless there are too many for one plot and a swept number to split them by."""
    fields = numeric_fields(variants)
    if len(variants) <= _MAX_LINES or not fields:
        return None, [(None, variants)]
    field = fields[0]
    by_value: dict[object, list[Variant]] = {}
    for variant in variants:
        by_value.setdefault(variant.values[field], []).append(variant)
    return field, sorted(by_value.items())


def _labels_apart_from(variants: list[Variant], field: str) -> dict[str, str]:
    """Variant name -> a label of its swept settings other than `field`: the variants that differ
    in `field` alone share it (one line against `field`, one colour across facets of it)."""
    others = {v.name: {k: x for k, x in v.values.items() if k != field} for v in variants}
    key_of = {name: repr(sorted(settings.items())) for name, settings in others.items()}
    distinct = {key_of[name]: settings for name, settings in others.items()}
    label_of_key = dict(zip(distinct, unique_names(list(distinct.values()))))
    return {name: label_of_key[key] for name, key in key_of.items()}


def learning_curves(variants: list[Variant], sweep_dir, path) -> None:
    """Eval accuracy and train loss against step (epoch where the runs' batch sizes differ); the
    band is ± one std over seeds. Many variants with a swept number: a row per value of it, each
    variant's line keeps its colour and label (its other settings) across rows."""
    metrics = {
        variant.name: [read_metrics(f"{sweep_dir}/{name}") for name in variant.point_names]
        for variant in variants
    }
    in_epochs = _examples_per_step_differ([m for runs in metrics.values() for m in runs])
    field, facets = _facets(variants)
    label_of = (
        {variant.name: variant.name for variant in variants}
        if field is None
        else _labels_apart_from(variants, field)
    )
    labels = list(dict.fromkeys(label_of.values()))
    color_of = dict(zip(labels, _colors(len(labels))))
    figure, axes = plt.subplots(
        len(facets), 2, figsize=(12, 1.2 + 3.6 * len(facets)), squeeze=False
    )
    short = short_labels(f for v in variants for f in v.values).get(field)
    for (value, facet), (accuracy_axis, loss_axis) in zip(facets, axes):
        for variant in facet:
            runs = metrics[variant.name]
            for axis, key in ((accuracy_axis, "eval/accuracy"), (loss_axis, "train/loss")):
                curves = [series(m, key) for m in runs]
                if in_epochs:
                    curves = [_in_epochs(m, curve) for m, curve in zip(runs, curves)]
                xs, mean, std = _band(curves)
                if xs.size == 0:
                    continue
                color = color_of[label_of[variant.name]]
                seeds = f" ({len(runs)} seed{'s' * (len(runs) > 1)})" if field is None else ""
                axis.plot(
                    xs,
                    mean,
                    color=color,
                    label=label_of[variant.name] + seeds,
                    marker="o" if xs.size < 12 else None,
                    markersize=3,
                )
                axis.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        where = f" ({short}={value_text(value)})" if field is not None else ""
        x_label = "epoch" if in_epochs else "step"
        accuracy_axis.set(title="eval accuracy" + where, xlabel=x_label, ylabel="accuracy")
        loss_axis.set(
            title="train loss" + where, xlabel=x_label, ylabel="loss (log scale)", yscale="log"
        )
        for axis in (accuracy_axis, loss_axis):
            axis.grid(alpha=0.3)
            axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        _plain_log_labels(loss_axis.yaxis)
    legend = {}
    for axis in axes.ravel():
        legend.update(zip(*reversed(axis.get_legend_handles_labels())))
    if legend:  # none when no point has a finite value yet (all failed, or diverged at once)
        figure.legend(
            legend.values(),
            legend.keys(),
            loc="lower center",
            ncol=min(len(legend), 4 if field is None else 3),
            frameon=False,
            fontsize="small",
        )
    seeds = "" if field is None else f"{max(len(v.point_names) for v in variants)} seeds; "
    figure.suptitle(
        f"mean over seeds, band: ± one standard deviation ({seeds}"
        f"x: {'epochs' if in_epochs else 'updates'})",
        fontsize="small",
    )
    rows = math.ceil(len(legend) / (4 if field is None else 3))
    figure.tight_layout(rect=(0, 0.3 * rows / figure.get_figheight(), 1, 0.97))
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
    label_of = _labels_apart_from(variants, field)
    for variant in variants:
        row = variant_row(variant)
        lines.setdefault(label_of[variant.name], []).append(
            (variant.values[field], row["final_accuracy_mean"], row["final_accuracy_std"])
        )
    label = short_labels(f for v in variants for f in v.values)[field]
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for (name, points), color in zip(lines.items(), _colors(len(lines))):
        points.sort()
        x = [p[0] for p in points]
        y = np.array([p[1] for p in points])
        err = np.nan_to_num(np.array([p[2] for p in points]))
        axis.errorbar(
            x,
            y,
            yerr=err,
            color=color,
            marker="o",
            capsize=3,
            label=name if len(lines) > 1 else None,
        )
    scale = _scale([v.values[field] for v in variants])
    axis.set_xscale(scale.pop("value"), **scale)
    if axis.get_xscale() == "log":
        _plain_log_labels(axis.xaxis)
    axis.set(
        title=f"final eval accuracy against {label}", xlabel=label, ylabel="final eval accuracy"
    )
    axis.grid(alpha=0.3, which="both")
    if len(lines) > 1:
        axis.legend(fontsize="small", frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


# The probes' figures (bnresearch/train/probes.py): (file, [(metric, panel title)]), drawn when
# some run logged the metrics. The activation statistics are averaged over the normalization
# sites of a record; the covariate shift also gets a panel per layer.
_LANDSCAPE = [
    ("landscape/loss_range", "loss range along -g"),
    ("landscape/gradient_predictiveness", "gradient predictiveness (max l2 change)"),
    ("landscape/beta_smoothness", "effective beta-smoothness"),
]
_COVARIATE_SHIFT = [
    ("ics/mean_l2", "internal covariate shift: mean l2"),
    ("ics/mean_cosine", "internal covariate shift: mean cosine"),
]
_ACTIVATIONS = [
    ("input_mean", "input mean"),
    ("input_std", "input std"),
    ("output_mean", "output mean"),
    ("output_std", "output std"),
]


def site_mean(metrics: list[dict], statistic: str) -> list[tuple[int, float]]:
    """(step, mean over the normalization sites of `activations/<site>/<statistic>`)."""
    curve = []
    for record in metrics:
        values = [
            value
            for key, value in record.items()
            if key.startswith("activations/") and key.endswith(f"/{statistic}")
        ]
        if values:
            curve.append((record["step"], float(np.mean(values))))
    return curve


def last_per_layer(metrics: list[dict], quantity: str = "l2") -> list[float]:
    """The last covariate-shift record's `ics/<NN>_<layer>/<quantity>`, in forward order."""
    records = [record for record in metrics if any(k.startswith("ics/") for k in record)]
    if not records:
        return []
    last = records[-1]
    layers = sorted(
        key
        for key in last
        if key.startswith("ics/") and key.endswith(f"/{quantity}") and key.count("/") == 2
    )
    return [last[key] for key in layers]


def _bands(axis, variants, metrics, curve_of, color_of) -> None:
    for variant in variants:
        xs, mean, std = _band([curve_of(m) for m in metrics[variant.name]])
        if xs.size == 0:
            continue
        color = color_of[variant.name]
        axis.plot(xs, mean, color=color, label=variant.name, marker="o" if xs.size < 12 else None)
        axis.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def _panels(variants, metrics, panels, path, extra=None) -> None:
    """One row of panels, each a (curve function, title) drawn per variant as a band over seeds;
    `extra(axis, color_of)` draws one more panel."""
    count = len(panels) + (extra is not None)
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 4.2), squeeze=False)
    color_of = dict(zip((v.name for v in variants), _colors(len(variants))))
    for axis, (curve_of, title) in zip(axes[0], panels):
        _bands(axis, variants, metrics, curve_of, color_of)
        axis.set(title=title, xlabel="step")
        axis.grid(alpha=0.3)
    if extra is not None:
        extra(axes[0][-1], color_of)
    legend = {}
    for axis in axes.ravel():
        legend.update(zip(*reversed(axis.get_legend_handles_labels())))
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=4, frameon=False)
    figure.suptitle("mean over seeds, band: ± one standard deviation", fontsize="small")
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def probe_figures(variants: list[Variant], sweep_dir, out_dir) -> list:
    """landscape.png, covariate_shift.png and activations.png in `out_dir`, each only where some
    run of the sweep logged its probe; returns the paths written."""
    metrics = {
        variant.name: [read_metrics(f"{sweep_dir}/{name}") for name in variant.point_names]
        for variant in variants
    }
    keys = {key for runs in metrics.values() for m in runs for record in m for key in record}
    logged = lambda prefix: any(key.startswith(prefix) for key in keys)
    by_key = lambda key: lambda m: series(m, key)
    paths = []
    if logged("landscape/"):
        paths.append(pathlib.Path(out_dir) / "landscape.png")
        panels = [(by_key(key), title) for key, title in _LANDSCAPE]
        _panels(variants, metrics, panels, paths[-1])
    if logged("ics/"):

        def per_layer(axis, color_of):
            for variant in variants:
                layers = [last_per_layer(m) for m in metrics[variant.name]]
                layers = [values for values in layers if values]
                if not layers or len({len(values) for values in layers}) > 1:
                    continue
                axis.plot(np.mean(layers, axis=0), color=color_of[variant.name], marker="o")
            axis.set(title="l2 shift per layer, last measurement", xlabel="layer (forward order)")
            axis.set_yscale("log")
            axis.grid(alpha=0.3)

        paths.append(pathlib.Path(out_dir) / "covariate_shift.png")
        panels = [(by_key(key), title) for key, title in _COVARIATE_SHIFT]
        _panels(variants, metrics, panels, paths[-1], extra=per_layer)
    if logged("activations/"):
        paths.append(pathlib.Path(out_dir) / "activations.png")
        panels = [
            (lambda m, s=statistic: site_mean(m, s), f"{title}, mean over sites")
            for statistic, title in _ACTIVATIONS
        ]
        _panels(variants, metrics, panels, paths[-1])
    return paths
