"""The launch scripts in scripts/: syntax, the commands they build, and real 2-process CPU
launches through torchrun and (with stand-ins for srun and scontrol) SLURM. The DeepSpeed
launcher script runs the examples in test_examples.py."""

from __future__ import annotations

import glob
import os
import re
import stat
import subprocess
import sys

import pytest

from sat.helpers import get_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(
    glob.glob(os.path.join(ROOT, "scripts", "*.sh")) + glob.glob(os.path.join(ROOT, "scripts", "*.sbatch"))
)
EXAMPLE_SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "*", "*.sh")))

# Joins the process group its launcher describes and reports what it was given.
PROBE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1])
dist.all_reduce(total)
omp = os.environ.get("OMP_NUM_THREADS")
print(f"rank {dist.get_rank()}/{dist.get_world_size()} sum {total.item()} omp {omp}", flush=True)
dist.barrier()
os._exit(0)
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.update({"PYTHON": sys.executable, "MASTER_PORT": str(get_free_port()), **extra})
    return env


def _run(command: list[str], env: dict, cwd: str = ROOT) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", SCRIPTS + EXAMPLE_SCRIPTS, ids=os.path.basename)
def test_scripts_parse_and_are_executable(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    assert os.stat(script).st_mode & stat.S_IXUSR


def test_deepspeed_launch_builds_single_node_include_and_hostfile_commands():
    launch = [os.path.join(ROOT, "scripts", "ds_launch.sh"), "train.py", "--lr", "1e-4"]
    cpu = _run(launch, _env(DRY_RUN="1", MASTER_PORT="29500"))
    assert cpu.strip().endswith("deepspeed --master_port 29500 --num_gpus 2 train.py --lr 1e-4")
    assert cpu.startswith(f"OMP_NUM_THREADS={max(1, os.cpu_count() // 2)} ")  # the cores shared out
    include = _run(launch, _env(DRY_RUN="1", INCLUDE="localhost:0,2"))
    assert "--include localhost:0,2 train.py" in include and "--num_gpus" not in include
    hostfile = os.path.join(ROOT, "scripts", "hostfile")
    nodes = _run(launch, _env(DRY_RUN="1", HOSTFILE=hostfile, NUM_NODES="2", NUM_GPUS="8"))
    assert f"--hostfile {hostfile} --num_nodes 2 --num_gpus 8 train.py" in nodes


def _ranks(output: str) -> list[str]:
    # The processes share stdout: their lines may run into each other.
    return sorted(re.findall(r"rank \d/\d sum \d+ omp \d+", output))


@pytest.mark.multiprocess
def test_torchrun_launch_runs_two_cpu_processes(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    out = _run([os.path.join(ROOT, "scripts", "torchrun_launch.sh"), "probe.py"], _env(), cwd=str(tmp_path))
    omp = max(1, os.cpu_count() // 2)
    assert _ranks(out) == [f"rank 0/2 sum 3 omp {omp}", f"rank 1/2 sum 3 omp {omp}"]


@pytest.mark.multiprocess
def test_slurm_launch_runs_torchrun_per_node_at_the_first_host(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Stand-ins: scontrol lists the allocation's hosts; srun records its options and runs the
    # command here (one node).
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'localhost\\nnode2\\n'\n")
    (bin_dir / "srun").write_text(
        '#!/bin/sh\necho "srun $*" > srun_args.txt\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n'
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = _env(SLURM_JOB_NODELIST="localhost,node2", SLURM_NNODES="1", SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="2")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    script = os.path.join(ROOT, "scripts", "slurm_launch.sbatch")
    out = _run(["bash", script, "probe.py"], env, cwd=str(tmp_path))
    assert "1 node(s) x 2 process(es), master localhost" in out
    assert _ranks(out) == ["rank 0/2 sum 3 omp 1", "rank 1/2 sum 3 omp 1"]
    srun = (tmp_path / "srun_args.txt").read_text()
    assert "--kill-on-bad-exit=1 torchrun --nnodes 1 --nproc_per_node 2 --rdzv_id 42" in srun
    assert f"--rdzv_endpoint localhost:{env['MASTER_PORT']} probe.py" in srun
