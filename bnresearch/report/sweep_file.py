"""DIR/sweep.json, the record of the sweep a directory holds: its config, base config and points.

The sweep writes it when it claims a directory (bnresearch/sweep/spec.py); the report and the
status view read it. It lives here, below the sweep, so that the report reads it without
importing the sweep. Standard library only.
"""

import dataclasses
import json
import pathlib

SWEEP_FILE = "sweep.json"


@dataclasses.dataclass(frozen=True)
class Point:
    name: str  # its run directory under the sweep directory
    overrides: dict  # dotted config field -> value
    label: str | None = None  # the variant's name, where the sweep gives one (grid.labeled)


@dataclasses.dataclass(frozen=True)
class Sweep:
    config_file: str  # absolute path of the config module
    arg: str | None  # the :ARG of --config, passed to get_config and get_sweep
    common_overrides: dict  # --config.FIELD=VALUE of the sweep's own command line
    base_config: dict  # get_config(arg) with the common overrides, as JSON
    points: tuple[Point, ...]

    def to_json(self) -> dict:
        return json_roundtrip(
            {
                "config_file": self.config_file,
                "arg": self.arg,
                "common_overrides": self.common_overrides,
                "base_config": self.base_config,
                "points": [
                    {"name": p.name, "overrides": p.overrides, "label": p.label}
                    for p in self.points
                ],
            }
        )

    @classmethod
    def from_json(cls, value: dict) -> "Sweep":
        return cls(
            value["config_file"],
            value["arg"],
            value["common_overrides"],
            value["base_config"],
            tuple(Point(p["name"], p["overrides"], p.get("label")) for p in value["points"]),
        )


def json_roundtrip(value):
    # Tuples become lists, as they will be when read back from sweep.json.
    return json.loads(json.dumps(value))


def read_sweep(sweep_dir) -> Sweep | None:
    path = pathlib.Path(sweep_dir) / SWEEP_FILE
    return Sweep.from_json(json.loads(path.read_text())) if path.exists() else None
