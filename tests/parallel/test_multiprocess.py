"""One experiment over 2 processes through jax.distributed (CPU collectives over gloo on
localhost, one CPU device each) against 1 process with 2 devices, with the state replicated and
with it sharded (fsdp) over the two processes' devices.

Each process reads its own contiguous half of every global batch (bnresearch/data/pipeline.py)
and runs the same SPMD program on its device; only the cross-device reductions (gradients,
batch-norm statistics, metrics) travel through gloo instead of staying in one process. With two
participants every such reduction is a single addition a + b per element, and IEEE addition is
commutative, so whichever order either transport combines the two halves in, the sums are the
same bits: the metrics must be identical, not merely close.
"""

import base64
import json
import os
import shutil
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


def launch_two_processes(workdir, data_dir, *flags):
    address = f"127.0.0.1:{free_port()}"
    return [
        launch(
            workdir,
            data_dir,
            1,
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={index}",
            *flags,
        )
        for index in range(2)
    ]


def finish(processes) -> list[str]:
    """Waits for every process to succeed; their outputs."""
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        outputs.append(output)
    return outputs


def test_two_processes_match_one_process_with_two_devices(tmp_path, prepared_data_dir):
    processes = launch_two_processes(tmp_path / "two", prepared_data_dir)
    single = launch(tmp_path / "one", prepared_data_dir, 2)
    finish([*processes, single])

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


# Every tensor of the MLP split over both processes' devices: (64, 16) kernels by rows, the head
# (16, 10) by rows, biases of 10 by halves.
FSDP = [
    "--config.mesh.shape.fsdp=2",
    "--config.sharding.strategy=fsdp",
    "--config.sharding.min_size=0",
]


def test_an_fsdp_run_over_two_processes_and_its_resume_match_one_process(
    tmp_path, prepared_data_dir
):
    processes = launch_two_processes(tmp_path / "two", prepared_data_dir, *FSDP)
    single = launch(tmp_path / "one", prepared_data_dir, 2, *FSDP)
    finish([*processes, single])
    reference = read_records(tmp_path / "one")
    # As in data parallelism, every cross-device sum has two terms: the same bits.
    assert read_records(tmp_path / "two") == reference
    # The state was saved sharded, and each process wrote the half it holds (orbax records the
    # shardings, and every process's write shapes).
    state = tmp_path / "two" / "checkpoints" / "8" / "state"
    shardings = {
        base64.b64decode(name).decode(): json.loads(sharding)["partition_spec"]
        for name, sharding in json.loads((state / "_sharding").read_text()).items()
    }
    assert shardings["params.dense1.kernel"] == ["fsdp"]
    assert shardings["opt_state.1.trace.head.kernel"] == ["fsdp"]
    for process in ("process_0", "process_1"):
        written = json.loads((state / "array_metadatas" / process).read_text())
        shapes = {
            m["array_metadata"]["param_name"]: m["array_metadata"]["write_shape"]
            for m in written["array_metadatas"]
        }
        assert shapes["params.dense1.kernel"] == [32, 16]  # of (64, 16)
        assert shapes["opt_state.1.trace.head.kernel"] == [8, 10]  # of (16, 10)

    # The two-process run as if killed after its checkpoint at step 4, relaunched.
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "two", crashed)
    shutil.rmtree(crashed / "checkpoints" / "8")
    (crashed / "status.json").write_text(json.dumps({"status": "running", "step": 6}))
    outputs = finish(launch_two_processes(crashed, prepared_data_dir, *FSDP))
    assert all("resumed from the checkpoint at step 4" in output for output in outputs)
    assert read_records(crashed) == reference
