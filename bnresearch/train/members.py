"""Which runs can train together as one population (`population.py`): rules on configs alone.

A population trains its members as one vectorised program, so they must compute the same
program: the same model, optimizer, data shapes and plan. Members may differ only in
`MEMBER_FIELDS`: the seed (its own initialization, data order and dropout masks), and the
hyperparameters a member's step takes as its own values, not as shapes: `base_lr` and every
field of `schedule` (each member's lr schedule), `label_smoothing`, the optimizer's
`weight_decay` and `momentum` (each member's own optimizer update, `population.py`), as long as
the weight decay is 0 in all members or in none (0 leaves its transform out of the optimizer,
whose state then has another structure), and the layer options of `layers/options.py`: the
dropout rates and the normalization's `epsilon` and `momentum`. Anything else (the
normalization itself, its other options, the model's shape...) is a constant of the model's
program, so such points train as separate runs.

Plain data and no JAX: the sweep, which never imports JAX, groups its points with these rules.
"""

from bnresearch.errors import UsageError

SEED_FIELD = "seed"
MEMBER_FIELDS = (
    SEED_FIELD,
    "base_lr",
    "label_smoothing",
    "schedule",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "model.dropout",
    "model.norm_kwargs.epsilon",
    "model.norm_kwargs.momentum",
)

# The measurement blocks of train/probes.py, each a separate program on one run's state.
PROBES = ("landscape", "covariate_shift", "activation_stats")

# What a sweep's --vectorize groups: points that differ only in their seed, or in any member
# field; or nothing (every point its own process).
VECTORIZE = ("seeds", "hyperparameters", "off")


def is_member_field(field: str, vectorize: str = "hyperparameters") -> bool:
    """Whether members of a population may differ in the dotted `field`."""
    if vectorize == "seeds":
        return field == SEED_FIELD
    return vectorize == "hyperparameters" and any(
        field == name or field.startswith(name + ".") for name in MEMBER_FIELDS
    )


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_fields(configs: list[dict]) -> list[str]:
    """The dotted fields whose values are not the same in all of `configs` (dicts)."""
    flat = [_flatten(config) for config in configs]
    fields = sorted(set().union(*flat))
    return [field for field in fields if len({repr(f.get(field)) for f in flat}) > 1]


def blocker(config: dict) -> str | None:
    """Why a run of `config` (a dict) cannot be a member of a population; None if it can."""
    if config["steps_per_call"] != 1:
        return "steps_per_call > 1 (a population runs one update per call)"
    if config["noise_scale"]["enabled"]:
        return "noise_scale.enabled (its sub-batch gradients are measured per run)"
    if config["init_from"]["workdir"]:
        return "init_from.workdir (fine-tuning starts from one source checkpoint per run)"
    if config["model"]["init_method"] != "default":
        return f"model.init_method={config['model']['init_method']} (tuned per run before training)"
    probes = [name for name in PROBES if config[name]["enabled"]]
    if probes:
        return f"{probes[0]}.enabled (its measurements are computed per run)"
    return None


def optimizer_structure(config: dict) -> tuple:
    """What of a member field changes the optimizer state's structure, so members must share
    it: whether there is weight decay."""
    return (config["optimizer"]["weight_decay"] > 0,)


def check_population(configs: list[dict]) -> None:
    """Raises a one-line UsageError unless `configs` (dicts) can train as one population."""
    for config in configs:
        reason = blocker(config)
        if reason is not None:
            raise UsageError(f"a population cannot train runs with {reason}; run them apart")
    others = [field for field in differing_fields(configs) if not is_member_field(field)]
    if others:
        raise UsageError(
            f"the members of a population differ in {', '.join(others)}; they may differ only in "
            f"{', '.join(MEMBER_FIELDS)} (fields that change no compiled constant or shape)"
        )
    if len({optimizer_structure(config) for config in configs}) > 1:
        raise UsageError(
            "the members of a population must all have optimizer.weight_decay > 0 or all 0 "
            "(0 leaves the decay out of the optimizer); run the others apart"
        )
