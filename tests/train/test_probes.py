"""The probes (landscape, covariate shift, activation statistics) in a run: measured at their
steps on the train step's own batch, logged, carried over a preemption, and leaving training
bitwise as it is without them."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.models import build_model
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.train import steps
from bnresearch.train.loop import train_and_evaluate
from bnresearch.train.state import create_train_state
from tests.shared_results import computed_once
from tests.train.runs import (
    StopAt,
    final_state,
    read_metrics,
    read_status,
    tiny_config,
    train_and_record_compilations,
)

RUN = {
    "train_duration": "6 steps",
    "steps_per_call": 2,
    "log_every": "3 steps",
    "eval_every": "0 steps",
    "checkpoint.every": "0 steps",
    "model.dropout.hidden": 0.2,  # random draws that the probes must see as the step does
}
PROBED = {
    "landscape.enabled": True,
    "landscape.every": "2 steps",
    "covariate_shift.enabled": True,
    "covariate_shift.every": "5 steps",
    "activation_stats.enabled": True,
    "activation_stats.every": "2 steps",  # so the preemption at step 4 carries one
    "activation_stats.histogram_buckets": 6,
}
PROBE_PROGRAMS = ("jit(landscape_step)", "jit(covariate_shift_step)", "jit(activation_stats_step)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A run without probes; the same with them, preempted at step 4 (logging every 3 steps, the
    window of steps 4-6 is open, with the landscape measured before update 4 in it) and
    resumed. Run once for the session's workers (45 s on the 2-core machine)."""

    def compute(root):
        plain = train_and_record_compilations(tiny_config(data_dir, **RUN), root / "plain")
        config = tiny_config(data_dir, **RUN, **PROBED)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(4))
            assert train_and_evaluate(config, str(root / "probed")) == "preempted"
            assert read_status(root / "probed")["step"] == 4
            assert [m["step"] for m in records(root / "probed", "landscape/")] == [2]
            patch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
            probed = train_and_record_compilations(config, root / "probed")
        return {"plain": plain, "probed": probed}

    root, compiled = computed_once(tmp_path_factory, "probes", compute)
    return root, compiled["plain"], compiled["probed"]


def records(workdir, prefix):
    return [
        {key: value for key, value in m.items() if key == "step" or key.startswith(prefix)}
        for m in read_metrics(workdir)
        if any(key.startswith(prefix) for key in m)
    ]


def test_probes_leave_training_bitwise_unchanged(runs):
    root, _, _ = runs
    assert records(root / "probed", "train/") == records(root / "plain", "train/")
    assert records(root / "probed", "eval/") == records(root / "plain", "eval/")
    jax.tree.map(
        np.testing.assert_array_equal, final_state(root / "probed"), final_state(root / "plain")
    )


def test_probes_are_logged_at_their_steps_and_only_compiled_when_on(runs):
    root, plain, probed = runs
    assert [m["step"] for m in records(root / "probed", "landscape/")] == [2, 4, 6]
    assert [m["step"] for m in records(root / "probed", "ics/")] == [5]
    assert [m["step"] for m in records(root / "probed", "activations/")] == [2, 4, 6]
    landscape = records(root / "probed", "landscape/")[0]
    assert set(landscape) == {
        "step",
        "landscape/loss",
        "landscape/gradient_norm",
        "landscape/loss_range",
        "landscape/gradient_predictiveness",
        "landscape/beta_smoothness",
    }
    (ics,) = records(root / "probed", "ics/")
    # The quickstart CNN's layers, in forward order, each with its distance and cosine.
    layers = sorted({key.split("/")[1] for key in ics if "/" in key} - {"mean_l2", "mean_cosine"})
    assert layers[0] == "00_stage1_conv1" and layers[-1].endswith("_head")
    assert {"ics/mean_l2", "ics/mean_cosine", f"ics/{layers[-1]}/cosine"} <= set(ics)
    assert ics["ics/00_stage1_conv1/l2"] < 1e-6 < ics[f"ics/{layers[-1]}/l2"]  # none before
    activations = records(root / "probed", "activations/")[0]
    assert "activations/stage1_conv1_norm/output_std" in activations
    for record in records(root / "probed", "landscape/") + [ics, activations]:
        assert all(np.isfinite(value) for value in record.values())
    assert not any(name in plain for name in PROBE_PROGRAMS)
    # The resumed launch compiles each probe once (one batch size).
    assert [probed.count(name) for name in PROBE_PROGRAMS] == [1, 1, 1]


def tensorboard_histograms(workdir) -> dict:
    """{(tag, step): [k, 3] buckets} of every histogram in the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "histograms":
                    found[value.tag, event.step] = tensor_util.make_ndarray(value.tensor)
    return found


def test_activation_histograms_go_to_tensorboard_at_the_statistics_steps(runs, data_dir):
    root, _, _ = runs
    histograms = tensorboard_histograms(root / "probed")
    site = "activations/stage1_conv1_norm"
    # Step 4's was pending at the preemption: carried in the checkpoint, written on resume.
    assert {step for tag, step in histograms if tag == f"{site}/input_histogram"} == {2, 4, 6}
    assert {tag for tag, _ in histograms} >= {f"{site}/input_histogram", f"{site}/output_histogram"}
    # Each counts every activation of the site: the batch's images x positions x channels (8x8
    # digits, the first conv's kernel's output channels).
    channels = final_state(root / "probed")["params"]["stage1_conv1"]["kernel"].shape[-1]
    batch_size = tiny_config(data_dir, **RUN).batch_size
    for buckets in histograms.values():
        assert buckets.shape == (6, 3) and np.all(np.diff(buckets[:, 0]) >= 0)
    for step in (2, 4, 6):
        counts = histograms[f"{site}/output_histogram", step][:, 2]
        assert counts.sum() == batch_size * 8 * 8 * channels
    # metrics.jsonl keeps scalars only.
    assert not any("histogram" in key for m in read_metrics(root / "probed") for key in m)


def tiny_cnn_run(data_seed: int, **model_options):
    """(model, optimizer, initial state, batch) of a 3-class CNN on a random 8x8 batch of 16."""
    model = build_model("cnn", num_classes=3, widths=(4, 8), convs_per_stage=1, **model_options)
    rng = np.random.default_rng(data_seed)
    batch = {
        "image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, size=16), jnp.int32),
    }
    optimizer = make_optimizer(base_config().optimizer, lambda step: 0.1)
    state = create_train_state(model, optimizer, jax.random.key(0), batch["image"])
    return model, optimizer, state, batch


def test_the_landscape_probes_the_loss_the_train_step_trains_on():
    # Same state and batch: the probe's L(theta) is the train step's loss, dropout draws too.
    model, optimizer, state, batch = tiny_cnn_run(2, dropout={"hidden": 0.5})
    probe = functools.partial(steps.landscape_step, model=model, step_sizes=(0.1, 0.2))
    train = functools.partial(
        steps.train_step, model=model, optimizer=optimizer, learning_rate_fn=lambda s: 0.1
    )
    scalars = jax.jit(probe)(state, batch)
    _, metrics = jax.jit(train)(state, batch)
    np.testing.assert_allclose(scalars["landscape/loss"], metrics["loss"], rtol=1e-6)


def _conv_orders(compiled_text: str) -> set[str]:
    return set(re.findall(r"dim_labels=([^,\s]+)", compiled_text))


def test_the_looped_probes_run_their_convolutions_in_the_cpu_backends_own_order():
    # The landscape and the covariate shift compute gradients inside a loop (lax.map), where
    # XLA's CPU backend leaves convolutions in JAX's order: a generic kernel, ~25 times slower on
    # the why_bn study's CNN (37 s for one landscape measurement of a 0.25 s step). With on_cpu
    # (what probes.probe_step passes on a CPU) every convolution is in the fast order, and the
    # values are the same.
    model, optimizer, state, batch = tiny_cnn_run(3)
    layers = tuple(state.params)  # the order does not matter for this comparison
    probes = {
        "landscape": functools.partial(steps.landscape_step, model=model, step_sizes=(0.1, 0.2)),
        "ics": functools.partial(
            steps.covariate_shift_step, model=model, optimizer=optimizer, layers=layers
        ),
    }
    for probe in probes.values():
        values = {}
        for on_cpu in (False, True):
            program = jax.jit(functools.partial(probe, on_cpu=on_cpu))
            orders = _conv_orders(program.lower(state, batch).compile().as_text())
            assert (orders == {"b01f_01io->b01f"}) == on_cpu, orders
            values[on_cpu] = program(state, batch)
        jax.tree.map(
            functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
            values[True],
            values[False],
        )


def test_a_bad_probe_block_is_refused_before_anything_runs(tmp_path, data_dir):
    config = tiny_config(
        data_dir,
        **{"covariate_shift.enabled": True, "optimizer.accumulation_steps": 2},
    )
    with pytest.raises(UsageError, match=r"covariate_shift.enabled=true needs optimizer"):
        train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
