"""Transfer learning: a run that starts from another run's checkpoint and fine-tunes.

Three config blocks meet here (``bnresearch/config/defaults.py``):

- ``init_from``: the source run's workdir and checkpoint step (default: its latest). Every layer
  of this run's model (its parameters and normalization state, grouped by the layer's path)
  whose leaves the checkpoint holds at the same paths and shapes is loaded; a layer whose shape
  differs (a classifier for another number of classes, a stem for other input channels) is
  re-initialised, as is every layer ``init_from.reinit`` names; a layer the checkpoint lacks,
  that ``reinit`` does not name, means the architecture does not fit: refused in one line by
  preflight, before the workdir is claimed. The source's files are only read
  (``bnresearch/checkpoint/source.py``).
- ``fine_tune.freeze`` / ``train_last_stages`` / ``body_lr`` / ``head_lr``: what trains
  (``bnresearch/optim/freezing.py``); the re-initialised layers are the head.
- ``fine_tune.norm``: batch statistics in training: ``adapt`` (as in any training), ``frozen``
  (the running statistics, unchanged), ``reestimate`` (recomputed on the new training data
  before the first step, ``reestimate.py``, then frozen).

The run logs what it loaded, re-initialised (and why) and froze, and records it with the
source's config and step in ``transfer.json`` (``rundir.py``). The start is applied once, to the
fresh state of step 0; a resumed fine-tuning run restores its own checkpoint, which holds all
of it, so it continues bitwise as if never stopped.
"""

import dataclasses
import functools
import logging
import pathlib

import jax
import ml_collections

from bnresearch import models
from bnresearch.checkpoint.source import read_source, source_steps
from bnresearch.errors import UsageError
from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.optim.freezing import FROZEN, Partition, frozen_patterns
from bnresearch.optim.groups import matches, path_name
from bnresearch.train.reestimate import population_statistics

log = logging.getLogger(__name__)

NORM_MODES = ("adapt", "frozen", "reestimate")
# The modes in which training normalizes with the running statistics.
FROZEN_STATISTICS = ("frozen", "reestimate")


def check_fine_tune_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for anything wrong with `init_from` and `fine_tune` that
    shows without the model: the norm mode, patterns, the source's workdir and step."""
    mode = config.fine_tune.norm
    if mode not in NORM_MODES:
        raise UsageError(f"unknown fine_tune.norm {mode!r}; valid: {', '.join(NORM_MODES)}")
    if mode in FROZEN_STATISTICS:
        models.check_frozen_statistics(config.model.norm)
    for field in ("init_from.reinit", "fine_tune.freeze"):
        block, name = field.split(".")
        patterns = config[block][name]
        if not all(isinstance(pattern, str) and pattern for pattern in patterns):
            raise UsageError(f"{field} must be path patterns (strings), got {patterns!r}")
    init_from = config.init_from
    if not init_from.workdir:
        if init_from.step is not None or init_from.reinit:
            raise UsageError("init_from.step and init_from.reinit need init_from.workdir")
        return
    steps = source_steps(pathlib.Path(init_from.workdir))
    if init_from.step is not None and init_from.step not in steps:
        raise UsageError(
            f"init_from.step={init_from.step} is not a checkpoint of {init_from.workdir}; "
            f"its steps: {', '.join(map(str, steps))}"
        )


@dataclasses.dataclass(frozen=True)
class Source:
    """The checkpoint a run starts from, and how this run's layers match it."""

    workdir: str
    step: int
    config: dict
    variables: dict  # {"params": ..., STATE: ...} as saved, NumPy
    loaded: tuple[str, ...]  # layer paths
    reinitialized: dict  # layer path -> why
    unused: tuple[str, ...]  # the checkpoint's layers this model does not have

    def load_into(self, variables: dict) -> dict:
        """`variables` ({"params", STATE}) with the loaded layers' leaves from the checkpoint."""

        def pick(collection, path, leaf):
            name = path_name(path)
            if _layer(name) not in self.loaded:
                return leaf
            return _leaf_at(self.variables[collection], name)

        return {
            collection: jax.tree_util.tree_map_with_path(functools.partial(pick, collection), tree)
            for collection, tree in variables.items()
        }


@dataclasses.dataclass(frozen=True)
class FineTune:
    """A run's transfer settings, resolved: the source (if any), what trains, the norm mode."""

    source: Source | None
    partition: Partition
    frozen_layers: tuple[str, ...]
    norm: str

    @property
    def reestimates(self) -> bool:
        return self.norm == "reestimate"

    def record(self) -> dict:
        """What transfer.json holds."""
        source = self.source
        return {
            "init_from": None
            if source is None
            else {
                "workdir": source.workdir,
                "step": source.step,
                "loaded": list(source.loaded),
                "reinitialized": source.reinitialized,
                "unused": list(source.unused),
                "config": source.config,
            },
            "frozen": list(self.frozen_layers),
            "norm": self.norm,
            "body_lr": self.partition.body_lr,
            "head_lr": self.partition.head_lr,
        }

    def log(self) -> None:
        source = self.source
        if source is not None:
            log.info(
                "init_from %s step %d: loaded %d layers; re-initialised: %s; not used: %s",
                source.workdir,
                source.step,
                len(source.loaded),
                "; ".join(f"{layer} ({why})" for layer, why in source.reinitialized.items())
                or "none",
                ", ".join(source.unused) or "none",
            )
        log.info(
            "fine-tuning: frozen: %s; normalization statistics: %s",
            ", ".join(self.frozen_layers) or "none",
            self.norm,
        )


def _layer(name: str) -> str:
    """The layer a leaf belongs to: its path without the leaf's own name."""
    return name.rpartition("/")[0]


def _leaf_at(tree: dict, name: str):
    for key in name.split("/"):
        tree = tree[key]
    return tree


def _shapes(variables: dict) -> dict:
    """{(collection, leaf path): shape} of the parameters and normalization state."""
    return {
        (collection, path_name(path)): tuple(leaf.shape)
        for collection in ("params", STATE)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables.get(collection, {}))
    }


def match_layers(target: dict, source: dict, reinit) -> tuple[tuple, dict, tuple]:
    """(loaded layers, {re-initialised layer: why}, the source's unused layers) for leaf shapes
    `target` (this model's) and `source` (the checkpoint's), both ``_shapes``; UsageError for a
    layer the checkpoint lacks that `reinit` does not name."""
    layers: dict[str, list] = {}
    for collection, name in target:
        layers.setdefault(_layer(name), []).append((collection, name))
    loaded, reinitialized, lacking = [], {}, []
    for layer, leaves in layers.items():
        pattern = next((p for p in reinit if matches(layer, (p,))), None)
        missing = [key[1] for key in leaves if key not in source]
        differ = [
            f"{key[1].rpartition('/')[2]}: {source[key]} in the checkpoint, {target[key]} here"
            for key in leaves
            if key in source and source[key] != target[key]
        ]
        if pattern is not None:
            reinitialized[layer] = f"init_from.reinit {pattern!r}"
        elif missing:
            lacking.append(missing[0])
        elif differ:
            reinitialized[layer] = "; ".join(differ)
        else:
            loaded.append(layer)
    if lacking:
        raise UsageError(
            f"the checkpoint lacks {len(lacking)} of this model's layers ({', '.join(lacking[:3])}"
            f"{', ...' if len(lacking) > 3 else ''}): another architecture; name the layers to "
            "re-initialise in init_from.reinit"
        )
    unused = sorted({_layer(name) for _, name in source} - set(layers))
    return tuple(loaded), reinitialized, tuple(unused)


def _abstract_variables(model, image_shape, batch_size: int) -> dict:
    keys = {"params": jax.random.key(0), RNG_STREAM: jax.random.key(1)}
    images = jax.ShapeDtypeStruct((batch_size, *image_shape), jax.numpy.float32)
    return jax.eval_shape(functools.partial(model.init, train=True), keys, images)


def _read(config: ml_collections.ConfigDict, target: dict) -> Source:
    workdir = pathlib.Path(config.init_from.workdir).absolute()
    step = config.init_from.step
    if step is None:
        step = source_steps(workdir)[-1]
    params, batch_stats, source_config = read_source(workdir, step)
    variables = {"params": params, STATE: batch_stats}
    loaded, reinitialized, unused = match_layers(
        target, _shapes(variables), config.init_from.reinit
    )
    return Source(str(workdir), step, source_config, variables, loaded, reinitialized, unused)


def resolve_fine_tune(
    config: ml_collections.ConfigDict, model, image_shape, batch_size: int, workdir
) -> FineTune | None:
    """The fine-tuning of `config` for `model` (built, traced at `batch_size` images of
    `image_shape`), or None when the config asks for none; reads the source checkpoint and
    raises a one-line UsageError where it does not fit. Writes nothing."""
    fine_tune, init_from = config.fine_tune, config.init_from
    changes_training = (
        fine_tune.freeze
        or fine_tune.train_last_stages
        or fine_tune.body_lr != 1.0
        or fine_tune.head_lr != 1.0
        or fine_tune.norm != "adapt"
    )
    if not (init_from.workdir or changes_training):
        return None
    if init_from.workdir and workdir is not None:
        if pathlib.Path(init_from.workdir).resolve() == pathlib.Path(workdir).resolve():
            raise UsageError(
                "init_from.workdir is this run's own workdir: a run continues from its own "
                "checkpoints by itself; start from another run"
            )
    target = _shapes(_abstract_variables(model, image_shape, batch_size))
    source = _read(config, target) if init_from.workdir else None
    names = [name for collection, name in target if collection == "params"]
    frozen = frozen_patterns(
        names, models.stages(model), tuple(fine_tune.freeze), fine_tune.train_last_stages
    )
    partition = Partition(
        frozen=frozen,
        head=tuple(source.reinitialized) if source is not None else (),
        body_lr=fine_tune.body_lr,
        head_lr=fine_tune.head_lr,
    )
    frozen_layers = tuple(
        dict.fromkeys(_layer(name) for name in names if partition.label(name) == FROZEN)
    )
    return FineTune(source, partition, frozen_layers, fine_tune.norm)


def start_state(
    fine_tune: FineTune,
    state,
    *,
    model,
    optimizer,
    statistics_batches,
    sharding,
    compiler_options: dict,
):
    """The fresh `state` of step 0 turned into the fine-tuning run's start: the source's layers
    loaded, the statistics re-estimated on `statistics_batches` (an iterable of global batches)
    if the mode asks, and the optimizer state made for those parameters, laid out as `sharding`
    says and compiled with the run's `compiler_options`."""
    variables = {"params": state.params, STATE: state.batch_stats}
    if fine_tune.source is not None:
        variables = fine_tune.source.load_into(variables)
    if fine_tune.reestimates:
        variables[STATE] = population_statistics(
            model, variables["params"], variables[STATE], statistics_batches(), compiler_options
        )
        log.info("re-estimated the normalization statistics on the training data")

    def rebuilt(state, params, batch_stats):
        return state.replace(
            params=params, batch_stats=batch_stats, opt_state=optimizer.init(params)
        )

    return jax.jit(rebuilt, out_shardings=sharding, compiler_options=compiler_options)(
        state, variables["params"], variables[STATE]
    )
