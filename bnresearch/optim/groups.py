"""Parameter groups, for per-group learning rates and weight-decay masks.

Every parameter falls in one of three groups, decided by its shape and name alone:
- ``kernel``: arrays of two or more dimensions: conv and dense weights (also the latent
  real-valued weights of quantized layers and the directions of weight-normalized ones).
- ``scale``: vectors named ``scale``: the per-channel gain (gamma) of every normalization, and
  the per-unit gain g of weight normalization. Normalizations name their gain ``scale`` so that
  this rule finds it.
- ``bias``: every other vector or scalar: biases, normalization shifts (beta) and per-channel
  parameters such as PReLU slopes or FRN thresholds.

Davis & Frank 2022 ("Revisiting Batch Norm Initialization") divide the lr of every gamma by 100;
Goyal et al. 2017 (arXiv:1706.02677) exempt normalization parameters and biases from weight
decay; You et al. 2017 (LARS, arXiv:1708.03888) also exempt them from the trust ratio: each is one
line of config with these groups.
"""

import fnmatch

import jax
import optax

GROUPS = ("kernel", "scale", "bias")
# What weight decay (optimizer.weight_decay_on) or a trust ratio (optimizer.trust_ratio_on) acts
# on: every parameter, or the kernels only.
TARGETS = ("all", "kernels")


def parameter_group(path, leaf) -> str:
    if leaf.ndim >= 2:
        return "kernel"
    last_key = path[-1]
    if getattr(last_key, "key", None) == "scale":
        return "scale"
    return "bias"


def group_labels(tree):
    """The group of every leaf of a parameter-shaped tree (params, grads or updates)."""
    return jax.tree_util.tree_map_with_path(parameter_group, tree)


def target_mask(target: str):
    """The mask optax's weight decay and ``optax.masked`` take: which parameters ``target``
    covers (None: all of them)."""
    if target == "all":
        return None
    return lambda params: jax.tree.map(lambda group: group == "kernel", group_labels(params))


def scale_by_group(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each group's updates by its multiplier: its learning rate times that factor.

    Placed after the optimizer, this equals a per-group lr for every optimizer here, since all of
    them scale their whole update (decoupled decay included) by the lr.
    """

    def update_fn(updates, state, params=None):
        del params
        scaled = jax.tree.map(
            lambda update, group: update * multipliers[group], updates, group_labels(updates)
        )
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def path_name(path) -> str:
    """A leaf's path in a parameter (or state) tree as 'module/.../leaf', e.g.
    'stage1_block1/conv1/kernel': the form the path patterns of freezing and transfer match."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def matches(name: str, patterns) -> bool:
    """Whether `name` (a ``path_name``) lies in a subtree one of `patterns` names: a pattern is
    an fnmatch pattern of a path prefix, so 'head' covers 'head/kernel' and 'head/bias', and
    'stage3_*' every parameter of every block of stage 3."""
    parts = name.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)
