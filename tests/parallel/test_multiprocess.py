"""One experiment over 2 processes through jax.distributed (CPU collectives over gloo on
localhost, one CPU device each) against 1 process with 2 devices.

Each process reads its own contiguous half of every global batch (bnresearch/data/pipeline.py)
and runs the same SPMD program on its device; only the cross-device reductions (gradients,
batch-norm statistics, metrics) travel through gloo instead of staying in one process. With two
participants every such reduction is a single addition a + b per element, and IEEE addition is
commutative, so whichever order either transport combines the two halves in, the sums are the
same bits: the metrics must be identical, not merely close.
"""

import json
import os
import socket
import subprocess
import sys

from tests.sweep.sweeps import REPO, TINY

STEPS = [
    "--config.train_duration=8 steps",
    "--config.eval_every=4 steps",
    "--config.checkpoint.every=4 steps",
]


def launch(workdir, data_dir, devices, *flags):
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={TINY}",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        *STEPS,
        *flags,
    ]
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_two_devices(tmp_path, prepared_data_dir):
    address = f"127.0.0.1:{free_port()}"
    processes = [
        launch(
            tmp_path / "two",
            prepared_data_dir,
            1,
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={index}",
        )
        for index in range(2)
    ]
    single = launch(tmp_path / "one", prepared_data_dir, 2)
    for process in [*processes, single]:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output

    environment = json.loads((tmp_path / "two" / "environment.json").read_text())[0]
    assert (environment["process_count"], environment["device_count"]) == (2, 2)
    two, one = read_records(tmp_path / "two"), read_records(tmp_path / "one")
    assert [r["step"] for r in two if "train/loss" in r] == list(range(1, 9))  # process 0 only
    assert two == one
    # Each process saved its own input-pipeline position with the shared checkpoint.
    iterator_files = {
        p.name for p in (tmp_path / "two" / "checkpoints" / "8" / "data_iterator").iterdir()
    }
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= iterator_files
