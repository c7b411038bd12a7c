"""GradInit: the scales' gradient in both branches against NumPy finite differences, the folding
by hand, and the tuning in a run (logged, deterministic over an interrupted start)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax import lax
from jax.extend import core as jax_core

from bnresearch.errors import UsageError
from bnresearch.models import build_model
from bnresearch.train import gradinit
from bnresearch.train.gradinit import GradInitSettings, fold, iteration, scale_gradient
from bnresearch.train.loop import train_and_evaluate
from bnresearch.train.state import TrainState
from tests.train.runs import (
    StopAt,
    read_metrics,
    read_status,
    tiny_config,
    train_and_record_compilations,
)

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(12, 3)), RNG.normal(size=12)
X2, Y2 = RNG.normal(size=(12, 3)), RNG.normal(size=12)
W0, C0 = RNG.normal(size=3), 0.7


def settings(**fields):
    base = dict(iterations=1, lr=0.01, inner_lr=0.2, gamma=1.0, norm_order=2, min_scale=0.01)
    return GradInitSettings(**{**base, **fields})


def jax_loss(params, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.square(x @ params["w"] + params["c"] - y))


def numpy_loss(w, c, x, y):
    return 0.5 * np.mean(np.square(x @ w + c - y))


def numpy_gradient(w, c, x, y):
    residual = x @ w + c - y
    return x.T @ residual / len(y), np.mean(residual)


def numpy_objectives(a, order, inner_lr):
    """(||g||_p, L(S'; theta(a) - eta g)) at scales a = (a_w, a_c), in float64."""
    w, c = a[0] * W0, a[1] * C0
    gw, gc = numpy_gradient(w, c, X, Y)
    norm = np.sum(np.abs(gw)) + abs(gc) if order == 1 else np.sqrt(np.sum(gw**2) + gc**2)
    return norm, numpy_loss(w - inner_lr * gw, c - inner_lr * gc, X2, Y2)


def finite_difference(objective, a, h=1e-6):
    return np.array(
        [(objective(a + h * e) - objective(a - h * e)) / (2 * h) for e in np.eye(len(a))]
    )


PARAMS = {"w": jnp.asarray(W0, jnp.float32), "c": jnp.asarray(C0, jnp.float32)}
BATCHES = (  # S and S', the batch of the gradient and the fresh one
    (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)),
    (jnp.asarray(X2, jnp.float32), jnp.asarray(Y2, jnp.float32)),
)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("gamma, constrained", [(1e-3, True), (1e3, False)])
def test_the_scale_gradient_is_the_constraints_or_the_steps(order, gamma, constrained):
    a = np.array([1.3, 0.8])
    scales = {"w": jnp.float32(a[0]), "c": jnp.float32(a[1])}
    s = settings(gamma=gamma, norm_order=order)
    direction, loss, norm, violated = scale_gradient(scales, PARAMS, jax_loss, *BATCHES, s)
    expected_norm, _ = numpy_objectives(a, order, s.inner_lr)
    assert bool(violated) == constrained
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-5)
    np.testing.assert_allclose(loss, numpy_loss(a[0] * W0, a[1] * C0, X, Y), rtol=1e-5)
    branch = 0 if constrained else 1  # ||g||_p above gamma, else the loss after the step
    expected = finite_difference(lambda b: numpy_objectives(b, order, s.inner_lr)[branch], a)
    np.testing.assert_allclose([direction["w"], direction["c"]], expected, rtol=1e-4)


def test_an_iteration_is_one_adam_step_floored_at_min_scale():
    scales = {"w": jnp.float32(1.0), "c": jnp.float32(0.011)}
    s = settings(gamma=1e3, lr=0.05, min_scale=0.01)
    opt_state = optax.adam(s.lr).init(scales)
    new, _, scalars = iteration(scales, opt_state, PARAMS, jax_loss, *BATCHES, s)
    direction, *_ = scale_gradient(scales, PARAMS, jax_loss, *BATCHES, s)
    # Adam's first step is lr * sign(gradient) (up to its epsilon).
    for name in ("w", "c"):
        expected = max(float(scales[name]) - s.lr * np.sign(direction[name]), s.min_scale)
        np.testing.assert_allclose(new[name], expected, rtol=1e-5)
    assert float(scalars["gradinit/constrained"]) == 0.0


def _conv_orders(jaxpr, in_cond: bool = False) -> set:
    """The dimension numbers of every convolution inside a `cond` of `jaxpr` or of the programs
    it calls (XLA brings those outside to its order itself)."""
    orders = set()
    for eqn in jaxpr.eqns:
        if in_cond and eqn.primitive.name == "conv_general_dilated":
            orders.add(eqn.params["dimension_numbers"])
        for sub in jax_core.jaxprs_in_params(eqn.params):
            orders |= _conv_orders(sub, in_cond or eqn.primitive.name == "cond")
    return orders


def test_on_a_cpu_the_gradient_after_the_step_convolves_in_the_backends_own_order():
    # The gradient after the step is computed in a lax.cond, where XLA's CPU backend leaves
    # convolutions in JAX's order (canonical_convolutions.py): one iteration of the why_bn
    # study's 15-conv network took 14 s that way, 0.9 s with on_cpu (what tune passes on a CPU).
    model = build_model("cnn", num_classes=3, widths=(4, 8), convs_per_stage=1, norm="none")
    rng = np.random.default_rng(1)
    batches = [
        {
            "image": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 3, size=8), jnp.int32),
        }
        for _ in range(2)
    ]
    params = model.init(jax.random.key(0), batches[0]["image"], train=False)["params"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    canonical = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    scales = gradinit.init_scales(params)
    for gamma in (1e-3, 1e3):  # each branch taken
        results = {}
        for on_cpu in (False, True):
            fn = lambda s: scale_gradient(
                s, params, loss_fn, *batches, settings(gamma=gamma), on_cpu=on_cpu
            )
            orders = _conv_orders(jax.make_jaxpr(fn)(scales).jaxpr)
            assert (orders == {canonical}) == on_cpu, orders
            results[on_cpu] = jax.jit(fn)(scales)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *results.values()
        )


def test_folding_scales_each_tensor_and_starts_the_optimizer_afresh():
    params = {"w": jnp.asarray(W0, jnp.float32), "c": jnp.asarray(C0, jnp.float32)}
    optimizer = optax.sgd(0.1, momentum=0.9)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={},
        opt_state=optimizer.init(params),
        rng=jax.random.key(0),
    )
    folded = fold(state, {"w": jnp.float32(0.5), "c": jnp.float32(3.0)}, optimizer)
    np.testing.assert_allclose(folded.params["w"], 0.5 * W0.astype(np.float32), rtol=1e-7)
    np.testing.assert_allclose(folded.params["c"], 3.0 * np.float32(C0), rtol=1e-7)
    trace = folded.opt_state[0].trace
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(trace))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model.init_method": "gradient"}, r"unknown model.init_method 'gradient'; valid: "),
        (
            {"model.init_method": "gradinit", "init_from.workdir": "/runs/a"},
            r"cannot start from init_from.workdir='/runs/a'",
        ),
    ],
)
def test_gradinit_where_it_cannot_run_is_refused(config, message):
    block = ml_collections.ConfigDict(
        {"model": {"init_method": "default"}, "init_from": {"workdir": ""}}
    )
    for field, value in config.items():
        parent, leaf = field.split(".")
        block[parent][leaf] = value
    with pytest.raises(UsageError, match=message):
        gradinit.check_gradinit_config(block)


RUN = {
    "train_duration": "2 steps",
    "log_every": "1 steps",
    "eval_every": "0 steps",
    "checkpoint.every": "0 steps",
    "model.init_method": "gradinit",
    "gradinit.iterations": 3,
    "gradinit.gamma": 0.5,
}


def test_a_run_tunes_logs_and_starts_over_to_the_same_numbers(tmp_path, data_dir, monkeypatch):
    compiled = train_and_record_compilations(tiny_config(data_dir, **RUN), tmp_path / "whole")
    # One program for all the iterations: nothing compiles again after the first.
    assert compiled.count("jit(one_iteration)") == 1
    whole = read_metrics(tmp_path / "whole")
    tuning = [m for m in whole if "gradinit/loss" in m]
    assert [(m["step"], m["gradinit/iteration"]) for m in tuning] == [(0, 0), (0, 1), (0, 2)]
    assert all(np.isfinite(m["gradinit/gradient_norm"]) for m in tuning)
    # The untuned network's first gradient exceeds gamma = 0.5: the constraint acts first.
    assert tuning[0]["gradinit/constrained"] == 1.0
    # Preempted after the tuning, before the first step: nothing is saved, the relaunch tunes
    # again, replacing the records, to the same numbers as the run that never stopped.
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(0))
    assert train_and_evaluate(tiny_config(data_dir, **RUN), str(tmp_path / "again")) == "preempted"
    assert read_status(tmp_path / "again")["step"] == 0
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    assert train_and_evaluate(tiny_config(data_dir, **RUN), str(tmp_path / "again")) == "done"
    assert read_metrics(tmp_path / "again") == whole
    # And GradInit changed the start: the first loss differs from the default init's.
    default = {**RUN, "model.init_method": "default"}
    assert train_and_evaluate(tiny_config(data_dir, **default), str(tmp_path / "plain")) == "done"
    first = lambda metrics: next(m["train/loss"] for m in metrics if "train/loss" in m)
    assert first(read_metrics(tmp_path / "plain")) != first(whole)
