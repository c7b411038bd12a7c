"""A sweep as data: a config, its `get_sweep(arg)` points checked against it, and their names.

`DIR/sweep.json` records the sweep a directory holds: the config file and arg, the overrides
given on the sweep's command line (they apply to every point), the resolved base config, and the
points with their run names (the record: bnresearch/report/sweep_file.py). Each point runs as

    python -m bnresearch.launch --config FILE[:ARG] --workdir DIR/<name> --config.FIELD=VALUE ...

which runs what `python launch.py` runs with those flags: a point is exactly a single run that
anyone can relaunch by hand.
"""

import importlib.util
import json
import pathlib
import sys

import ml_collections

from bnresearch.config.compare import differences, summarize
from bnresearch.config.fields import field_type
from bnresearch.errors import UsageError
from bnresearch.report.naming import unique_names
from bnresearch.report.sweep_file import SWEEP_FILE, Point, Sweep, json_roundtrip, read_sweep
from bnresearch.sweep import grid
from bnresearch.train import members

_SCALARS = (bool, int, float, str)


def point_command(sweep: Sweep, point: Point, sweep_dir) -> list[str]:
    """The point's process: the installed package's launch module, not a file of a checkout."""
    config = sweep.config_file + (f":{sweep.arg}" if sweep.arg is not None else "")
    overrides = {**sweep.common_overrides, **point.overrides}
    return [
        sys.executable,
        "-m",
        "bnresearch.launch",
        f"--config={config}",
        f"--workdir={pathlib.Path(sweep_dir).resolve() / point.name}",
        *(f"--config.{field}={flag_text(value)}" for field, value in overrides.items()),
    ]


def population_command(sweep: Sweep, points: tuple[Point, ...], sweep_dir) -> list[str]:
    """The process that trains `points` together as one population (bnresearch/train/
    population.py): launch's --member names each; each reads its overrides from sweep.json
    and keeps its own run directory, DIR/<name>, as if it ran alone."""
    config = sweep.config_file + (f":{sweep.arg}" if sweep.arg is not None else "")
    return [
        sys.executable,
        "-m",
        "bnresearch.launch",
        f"--config={config}",
        f"--workdir={pathlib.Path(sweep_dir).resolve()}",
        *(f"--member={point.name}" for point in points),
        *(
            f"--config.{field}={flag_text(value)}"
            for field, value in sweep.common_overrides.items()
        ),
    ]


def _with_overrides(config: dict, overrides: dict) -> dict:
    """`config` (a dict) with dotted `overrides` applied."""
    config = json.loads(json.dumps(config))
    for field, value in overrides.items():
        *groups, name = field.split(".")
        node = config
        for group in groups:
            node = node[group]
        node[name] = value
    return config


def group_points(sweep: Sweep, points: list[Point], vectorize: str) -> list[tuple[Point, ...]]:
    """`points` in groups that train as one population each (`--vectorize`, train/members.py):
    points whose overrides agree but for the member fields and whose optimizers have the same
    structure, none of whose configs forbids it; a point alone is a group of one. Groups keep
    the sweep's order of their first point."""
    groups = {}
    for point in points:
        config = _with_overrides(sweep.base_config, point.overrides)
        if vectorize == "off" or members.blocker(config) is not None:
            key = ("alone", point.name)
        else:
            shared = {
                field: value
                for field, value in point.overrides.items()
                if not members.is_member_field(field, vectorize)
            }
            key = (
                "shared",
                json.dumps(shared, sort_keys=True),
                members.optimizer_structure(config),
            )
        groups.setdefault(key, []).append(point)
    return [tuple(group) for group in groups.values()]


def flag_text(value) -> str:
    """The text of --config.FIELD=TEXT that ml_collections parses back to `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return str(value)


def load_config_module(config_file: str):
    path = pathlib.Path(config_file)
    if not path.is_file():
        raise UsageError(f"config file {config_file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_override(config: ml_collections.ConfigDict, field: str, value) -> None:
    """Refuses an override that `--config.FIELD=VALUE` could not set to exactly `value`."""
    declared = field_type(config, field)
    if isinstance(declared, type) and issubclass(declared, ml_collections.ConfigDict):
        raise UsageError(f"config field {field!r} is a group; set its fields, e.g. {field}.NAME")
    if declared is tuple:
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value)
    elif declared is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif declared is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = declared in _SCALARS and isinstance(value, declared)
    if not ok:
        expected = getattr(declared, "__name__", str(declared))
        article = "an" if expected[0] in "aeiou" else "a"
        raise UsageError(f"config field {field!r} takes {article} {expected}, got {value!r}")


def expand(
    config_file: str, arg: str | None, config: ml_collections.ConfigDict, common_overrides: dict
) -> Sweep:
    """The sweep of `config_file`'s get_sweep(arg), every point checked against `config`."""
    module = load_config_module(config_file)
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise UsageError(
            f"{config_file} defines no get_sweep(arg); add one returning a list of "
            "override dicts (see bnresearch/sweep/grid.py)"
        )
    raw_points = list(get_sweep(arg) if arg is not None else get_sweep())
    if not raw_points:
        raise UsageError(f"get_sweep of {config_file} returned no points")
    seen, labels = {}, []
    for index, overrides in enumerate(raw_points):
        if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
            raise UsageError(
                f"sweep point {index} is {overrides!r}; each point must be a dict "
                "of dotted config fields, e.g. {'model.norm': 'group'}"
            )
        overrides = dict(overrides)
        label = overrides.pop(grid.LABEL, None)
        if label is not None and not (isinstance(label, str) and label.strip()):
            raise UsageError(
                f"sweep point {index}: its label must be a non-empty string, got {label!r}"
            )
        labels.append(label)
        raw_points[index] = overrides
        for field, value in overrides.items():
            if field in common_overrides:
                raise UsageError(
                    f"--config.{field} on the command line conflicts with the "
                    f"sweep, which sets it in point {index} {overrides}"
                )
            try:
                check_override(config, field, value)
            except UsageError as error:
                raise UsageError(f"sweep point {index} {overrides}: {error}") from None
        key = json.dumps(json_roundtrip(overrides), sort_keys=True)
        if key in seen:
            raise UsageError(f"sweep points {seen[key]} and {index} are the same: {overrides}")
        seen[key] = index
    names = unique_names(raw_points, labels)
    return Sweep(
        config_file=str(pathlib.Path(config_file).resolve()),
        arg=arg,
        common_overrides=json_roundtrip(common_overrides),
        base_config=json.loads(config.to_json()),
        points=tuple(
            Point(name, json_roundtrip(p), label)
            for name, p, label in zip(names, raw_points, labels)
        ),
    )


def module_settings(config_file: str, arg: str | None, function_name: str) -> dict:
    """The dict of an optional function of the config module, e.g. get_slurm(arg); {} if none."""
    function = getattr(load_config_module(config_file), function_name, None)
    if function is None:
        return {}
    settings = function(arg) if arg is not None else function()
    if not isinstance(settings, dict):
        raise UsageError(f"{function_name} of {config_file} must return a dict, got {settings!r}")
    return dict(settings)


def _point_changes(old: list[dict], new: list[dict]) -> list[str]:
    old = {p["name"]: p["overrides"] for p in old}
    new = {p["name"]: p["overrides"] for p in new}
    changes = []
    for verb, names in (
        ("removed", old.keys() - new.keys()),
        ("added", new.keys() - old.keys()),
        ("changed", {n for n in old.keys() & new.keys() if old[n] != new[n]}),
    ):
        if names:
            shown = sorted(names)
            changes.append(
                f"points {verb}: {', '.join(shown[:3])}"
                + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
            )
    return changes


def claim(sweep: Sweep, sweep_dir) -> None:
    """Writes DIR/sweep.json for a new sweep; refuses DIR if it holds anything else.

    Reads only until it is sure: a refused launch touches nothing.
    """
    sweep_dir = pathlib.Path(sweep_dir)
    stored = read_sweep(sweep_dir)
    if stored is not None:
        old, new = stored.to_json(), sweep.to_json()
        old.pop("config_file"), new.pop("config_file")  # the same config moved is the same sweep
        changes = _point_changes(old.pop("points"), new.pop("points"))
        changes += list(differences(old, new))
        if changes:
            raise UsageError(
                f"{sweep_dir} holds another sweep ({summarize(changes)}); "
                "use a new --workdir or the same config, arg and overrides"
            )
        return
    if (sweep_dir / "config.json").exists():
        raise UsageError(f"{sweep_dir} holds a single run, not a sweep; use a new --workdir")
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise UsageError(f"{sweep_dir} is not empty and holds no {SWEEP_FILE}; use a new --workdir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    temporary = sweep_dir / (SWEEP_FILE + ".tmp")
    temporary.write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
    temporary.replace(sweep_dir / SWEEP_FILE)
