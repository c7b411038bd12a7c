"""Which parameters train during fine-tuning, and at which learning rate.

Every parameter gets one label, from its path alone (``groups.path_name``):
- ``frozen``: in a subtree that ``fine_tune.freeze`` names, or outside the model's last N stages
  with ``fine_tune.train_last_stages`` = N (``models.stages``: 1 trains the classifier alone, a
  linear probe; 2 the last stage too);
- ``head``: re-initialised by ``init_from`` (``bnresearch/train/transfer.py``): a new classifier,
  a stem for other input channels; it learns at the scheduled lr x ``fine_tune.head_lr``;
- ``body``: every other parameter, at the scheduled lr x ``fine_tune.body_lr``.

The optimizer is optax's partitioned transform (``optax.multi_transform``): frozen parameters go
to ``optax.set_to_zero`` (updates exactly 0, so they stay bitwise what they were, and an empty
state), the others to the configured chain, which sees only them: its optimizer state (momentum,
moments) exists for the trained parameters alone, and gradient clipping takes the norm of their
gradient. The lr multipliers sit where the per-group ones do (``optimizers.make_optimizer``).
With gradient accumulation ``optax.MultiSteps`` wraps the whole, so its accumulator does hold
every gradient, frozen ones included.
"""

import dataclasses

import jax
import optax

from bnresearch.errors import UsageError
from bnresearch.optim.groups import matches, path_name

FROZEN, BODY, HEAD = "frozen", "body", "head"
_TRAINED = "trained"


@dataclasses.dataclass(frozen=True)
class Partition:
    """Frozen and head subtrees as path patterns, and the lr multipliers of body and head."""

    frozen: tuple[str, ...] = ()
    head: tuple[str, ...] = ()
    body_lr: float = 1.0
    head_lr: float = 1.0

    def label(self, name: str) -> str:
        if matches(name, self.frozen):
            return FROZEN
        return HEAD if matches(name, self.head) else BODY

    def labels(self, tree):
        """The label of every leaf of a parameter-shaped tree."""
        return jax.tree_util.tree_map_with_path(lambda path, _: self.label(path_name(path)), tree)

    def scale_lrs(self) -> optax.GradientTransformation:
        """Multiplies body and head updates by their multipliers (frozen ones are zero)."""
        multipliers = {BODY: self.body_lr, HEAD: self.head_lr, FROZEN: 0.0}

        def update_fn(updates, state, params=None):
            del params
            scaled = jax.tree_util.tree_map_with_path(
                lambda path, update: update * multipliers[self.label(path_name(path))], updates
            )
            return scaled, state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)

    def apply(self, optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
        """`optimizer` on the trained parameters; zero updates and no state for frozen ones."""
        trained_or_frozen = lambda params: jax.tree.map(
            lambda label: FROZEN if label == FROZEN else _TRAINED, self.labels(params)
        )
        return optax.multi_transform(
            {FROZEN: optax.set_to_zero(), _TRAINED: optimizer}, trained_or_frozen
        )

    @property
    def changes_lrs(self) -> bool:
        return self.body_lr != 1.0 or self.head_lr != 1.0


def frozen_patterns(
    names: list[str], stages: tuple[tuple[str, ...], ...], freeze, train_last_stages: int
) -> tuple[str, ...]:
    """The patterns of the frozen subtrees: `freeze`'s and, for `train_last_stages` = N > 0, those
    of every stage but the last N. Raises UsageError for a pattern that names no parameter of
    `names` (a typo would freeze nothing), for N beyond the model's stages and when nothing would
    train."""
    tops = sorted({name.split("/")[0] for name in names})
    for pattern in freeze:
        if not isinstance(pattern, str) or not any(matches(name, (pattern,)) for name in names):
            raise UsageError(
                f"fine_tune.freeze pattern {pattern!r} names no parameter; the model's "
                f"top-level layers: {', '.join(tops)}"
            )
    if train_last_stages > len(stages):
        raise UsageError(
            f"fine_tune.train_last_stages={train_last_stages} but the model has "
            f"{len(stages)} stages: {'; '.join(', '.join(stage) for stage in stages)}"
        )
    by_stage = [p for stage in stages[: len(stages) - train_last_stages] for p in stage]
    patterns = tuple(freeze) + (tuple(by_stage) if train_last_stages else ())
    if names and all(matches(name, patterns) for name in names):
        raise UsageError(
            "fine_tune.freeze and fine_tune.train_last_stages freeze every parameter; "
            "nothing would train"
        )
    return patterns
