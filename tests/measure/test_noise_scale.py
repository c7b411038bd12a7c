"""The gradient noise scale: sub-batch norms against NumPy, the estimator on a synthetic problem
with a known B_simple, and the measurement on a mesh against one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bnresearch.config.defaults import base_config
from bnresearch.measure import noise_scale
from bnresearch.models import build_model
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.parallel.mesh import DATA_AXIS, make_mesh
from bnresearch.train.state import create_train_state
from bnresearch.train.steps import noise_scale_step


def mean_gradient(sub_batch, rng):
    """A loss whose per-example gradient is the example itself: L_i(w) = w . x_i."""
    del rng
    return {"w": jnp.mean(sub_batch["x"], axis=0)}


def test_sub_batches_are_contiguous_slices():
    x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    small_sq, big_sq = noise_scale.sub_batch_gradient_norms(
        mean_gradient, {"x": x}, 3, jax.random.key(0)
    )
    expected_small = np.mean([np.sum(x[i * 4 : (i + 1) * 4].mean(0) ** 2) for i in range(3)])
    np.testing.assert_allclose(small_sq, expected_small, rtol=1e-5)
    np.testing.assert_allclose(big_sq, np.sum(x.mean(0) ** 2), rtol=1e-5)


def test_estimator_recovers_b_simple_of_a_known_gradient_distribution():
    # Per-example gradients ~ N(G, Sigma): B_simple = tr(Sigma) / |G|^2 = 40 / 1.6 = 25.
    dimension, batch, sub_batches, measurements = 16, 64, 8, 2000
    rng = np.random.default_rng(1)
    true_gradient = rng.normal(size=dimension)
    true_gradient *= np.sqrt(1.6) / np.linalg.norm(true_gradient)
    factor = rng.normal(size=(dimension, dimension))
    covariance = factor @ factor.T
    covariance *= 40.0 / np.trace(covariance)
    examples = rng.multivariate_normal(true_gradient, covariance, size=(measurements, batch))

    def measure(state, x):
        small_sq, big_sq = noise_scale.sub_batch_gradient_norms(
            mean_gradient, {"x": x}, sub_batches, jax.random.key(0)
        )
        gradient_sq, trace = noise_scale.estimate(small_sq, big_sq, batch // sub_batches, batch)
        return noise_scale.update(state, gradient_sq, trace, decay=0.999), None

    state, _ = jax.lax.scan(
        measure, noise_scale.init_noise_scale(), jnp.asarray(examples, jnp.float32)
    )
    summary = noise_scale.summary(state, decay=0.999)
    assert int(state.count) == measurements
    assert float(summary["noise_scale"]) == pytest.approx(25.0, rel=0.06)
    assert float(summary["noise_scale_gradient_sq"]) == pytest.approx(1.6, rel=0.06)
    assert float(summary["noise_scale_trace"]) == pytest.approx(40.0, rel=0.06)


def test_estimates_are_exact_for_their_expectations():
    # E|G_b|^2 = |G|^2 + tr/b: feeding the expectations back returns |G|^2 and tr exactly.
    gradient_sq, trace = noise_scale.estimate(2.0 + 30.0 / 8, 2.0 + 30.0 / 64, 8, 64)
    assert (float(gradient_sq), float(trace)) == pytest.approx((2.0, 30.0))


def measured_on(batch, state, model):
    step = functools.partial(noise_scale_step, model=model, sub_batches=8, ema_decay=0.5)
    return jax.jit(step)(state, batch)


def test_measurement_on_eight_devices_matches_one_device():
    # Batch norm included: each sub-batch (one device's shard on the mesh) is normalized alone.
    model = build_model("cnn", num_classes=3, widths=(4, 8), convs_per_stage=1)
    rng = np.random.default_rng(2)
    batch = {
        "image": rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 3, size=32).astype(np.int32),
    }
    optimizer = make_optimizer(base_config().optimizer, lambda step: 0.1)
    state = create_train_state(
        model, optimizer, jax.random.key(0), jnp.asarray(batch["image"]), measure_noise_scale=True
    )
    one_device, scalars = measured_on(batch, state, model)
    sharding = NamedSharding(make_mesh(), PartitionSpec(DATA_AXIS))
    assert make_mesh().devices.size == 8
    sharded = jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
    on_mesh, mesh_scalars = measured_on(sharded, state, model)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4), on_mesh, one_device)
    assert int(one_device.count) == 1
    assert all(np.isfinite(float(v)) for v in scalars.values())
    np.testing.assert_allclose(mesh_scalars["noise_scale"], scalars["noise_scale"], rtol=1e-4)
