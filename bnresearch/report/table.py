"""One row per variant of a sweep: its points' overrides minus the seed, aggregated over seeds.

Accuracies and steps and epochs to the target come from the points that finished training
(status done); diverged points are counted, not averaged (they have no final accuracy). Spread is
the sample standard deviation over seeds (ddof=1), blank for a single seed.
"""

import dataclasses
import math

import numpy as np

from bnresearch.report.naming import unique_names
from bnresearch.report.runs import RunSummary, summarize_run
from bnresearch.report.sweep_file import Sweep
from bnresearch.run_status import DIVERGED, DONE

SEED = "seed"


@dataclasses.dataclass
class Variant:
    name: str
    overrides: dict  # the swept fields of this variant, seed excluded
    values: dict  # every swept field (seed excluded): its override or the base value
    point_names: list[str]  # its points, one per seed
    runs: list[RunSummary]

    def done(self) -> list[RunSummary]:
        return [run for run in self.runs if run.status == DONE]


def variants(sweep: Sweep, sweep_dir, target_accuracy: float | None) -> list[Variant]:
    """The sweep's variants in the order their first point appears."""
    grouped: dict[str, tuple[dict, str | None, list]] = {}
    for point in sweep.points:
        overrides = {k: v for k, v in point.overrides.items() if k != SEED}
        key = repr((point.label, sorted(overrides.items())))
        grouped.setdefault(key, (overrides, point.label, []))[2].append(point.name)
    names = unique_names(
        [overrides for overrides, _, _ in grouped.values()],
        [label for _, label, _ in grouped.values()],
    )
    swept = list(dict.fromkeys(f for overrides, _, _ in grouped.values() for f in overrides))
    return [
        Variant(
            name,
            overrides,
            {f: overrides.get(f, _base_value(sweep.base_config, f)) for f in swept},
            point_names,
            [summarize_run(f"{sweep_dir}/{p}", target_accuracy) for p in point_names],
        )
        for name, (overrides, _, point_names) in zip(names, grouped.values())
    ]


def _base_value(config: dict, field: str):
    for part in field.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def mean_and_std(values) -> tuple[float, float]:
    """(mean, sample std with ddof=1); NaN where there are too few values."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    mean = float(values.mean()) if values.size else math.nan
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return mean, std


def variant_row(variant: Variant) -> dict:
    done = variant.done()
    final = mean_and_std(run.final_accuracy for run in done)
    best = mean_and_std(run.best_accuracy for run in done)
    reached = [run for run in done if run.steps_to_target is not None]
    steps_to_target = mean_and_std(run.steps_to_target for run in reached)
    epochs_to_target = mean_and_std(run.epochs_to_target for run in reached)
    return {
        "variant": variant.name,
        **variant.values,
        "points": len(variant.runs),
        "done": len(done),
        "diverged": sum(run.status == DIVERGED for run in variant.runs),
        "final_accuracy_mean": final[0],
        "final_accuracy_std": final[1],
        "best_accuracy_mean": best[0],
        "best_accuracy_std": best[1],
        "steps_to_target_mean": steps_to_target[0],
        "steps_to_target_std": steps_to_target[1],
        "epochs_to_target_mean": epochs_to_target[0],
        "epochs_to_target_std": epochs_to_target[1],
        "reached_target": len(reached),
        "wall_time_s_mean": mean_and_std(run.wall_time_s for run in done)[0],
    }
