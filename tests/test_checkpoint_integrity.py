"""Checkpoint integrity: the manifest of every iteration directory, falling back from a damaged
newest checkpoint on resume (each file truncated, a byte flipped, deleted), loading a damaged one
for inference, the save lock, ``--save-keep`` rotation and a failed write on one rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from distributed import run_workers

from sat.checkpoint import CheckpointError
from sat.checkpoint.lock import LOCK_NAME, SaveLock
from sat.checkpoint.manifest import MANIFEST, verify_directory
from sat.checkpoint.recovery import choose_resume_iteration
from sat.model import AutoModel, BaseModel
from sat.tools.verify_checkpoint import main as verify_main
from sat.training.checkpointing import save_checkpoint


@pytest.fixture
def two_checkpoints(tmp_path, tiny_args):
    """``<tmp>/ckpt`` with iterations 1 and 2 of a tiny model (``latest`` = 2)."""
    args = tiny_args()
    args.save = str(tmp_path / "ckpt")
    model = BaseModel(args)
    for iteration in (1, 2):
        save_checkpoint(iteration, model, None, None, args)
    return args.save


def _damage(path: str, how: str) -> None:
    if how == "delete":
        os.remove(path)
        return
    data = bytearray(open(path, "rb").read())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one byte in the middle: the size stays, only the checksum sees it
        data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


def test_manifest_lists_every_file_with_size_and_checksum(two_checkpoints):
    directory = os.path.join(two_checkpoints, "2")
    manifest = json.load(open(os.path.join(directory, MANIFEST)))
    assert manifest["algorithm"] == "sha256"
    entry = manifest["files"]["mp_rank_00_model_states.pt"]
    assert set(manifest["files"]) == {"mp_rank_00_model_states.pt"}
    assert entry["size"] == os.path.getsize(os.path.join(directory, "mp_rank_00_model_states.pt"))
    assert len(entry["sha256"]) == 64
    assert verify_directory(directory, checksums=True) == []
    assert verify_main([two_checkpoints]) == 0


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", MANIFEST])
def test_resume_falls_back_from_a_damaged_newest_checkpoint_naming_the_file(two_checkpoints, name, how, sat_log):
    _damage(os.path.join(two_checkpoints, "2", name), how)
    deleted_manifest = name == MANIFEST and how == "delete"
    iteration = choose_resume_iteration(two_checkpoints, writable=True)
    if deleted_manifest:
        # Without a manifest the directory reads as the original's: its model file is there.
        assert iteration == 2 and "cannot be resumed" not in sat_log.text
        return
    assert iteration == 1
    warning = next(r.getMessage() for r in sat_log.records if "cannot be resumed from" in r.getMessage())
    assert "checkpoint 2" in warning and name in warning
    # Set aside for inspection, and `latest` says what the run continues from.
    assert sorted(os.listdir(two_checkpoints)) == ["1", "2.corrupt", "latest", "model_config.json"]
    assert open(os.path.join(two_checkpoints, "latest")).read() == "1"


def test_resume_without_writing_leaves_the_directory_alone(two_checkpoints):
    _damage(os.path.join(two_checkpoints, "2", "mp_rank_00_model_states.pt"), "flip")
    assert choose_resume_iteration(two_checkpoints, writable=False) == 1
    assert sorted(os.listdir(two_checkpoints)) == ["1", "2", "latest", "model_config.json"]


def test_no_intact_checkpoint_is_an_error_listing_every_problem(two_checkpoints):
    for iteration in ("1", "2"):
        _damage(os.path.join(two_checkpoints, iteration, "mp_rank_00_model_states.pt"), "truncate")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from .*2: .*1: "):
        choose_resume_iteration(two_checkpoints, writable=True)


def test_latest_naming_a_missing_iteration_falls_back(two_checkpoints):
    open(os.path.join(two_checkpoints, "latest"), "w").write("3")
    assert choose_resume_iteration(two_checkpoints, writable=False) == 2


def test_inference_load_of_a_damaged_checkpoint_is_a_clear_error(two_checkpoints):
    model_file = os.path.join(two_checkpoints, "2", "mp_rank_00_model_states.pt")
    _damage(model_file, "truncate")
    with pytest.raises(
        CheckpointError, match=r"2 is damaged: .*mp_rank_00_model_states.pt has \d+ bytes, the manifest"
    ):
        AutoModel.from_pretrained(two_checkpoints)


def test_a_flipped_byte_is_found_on_request(two_checkpoints, capsys):
    _damage(os.path.join(two_checkpoints, "2", "mp_rank_00_model_states.pt"), "flip")
    assert verify_main([two_checkpoints]) == 1
    assert "mp_rank_00_model_states.pt does not match its sha256" in capsys.readouterr().out


def test_checkpoints_without_a_manifest_still_load(two_checkpoints):
    os.remove(os.path.join(two_checkpoints, "2", MANIFEST))  # as the original library writes them
    assert verify_directory(os.path.join(two_checkpoints, "2")) is None
    model, _ = AutoModel.from_pretrained(two_checkpoints)
    assert choose_resume_iteration(two_checkpoints, writable=False) == 2


# ----------------------------------------------------------------------------- the lock
def test_the_lock_refuses_a_second_writer_and_is_released(tmp_path):
    with SaveLock(str(tmp_path)) as lock:
        holder = json.load(open(lock.path))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(CheckpointError, match=rf"another job \(pid {os.getpid()} on this host"):
            SaveLock(str(tmp_path)).acquire()
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path, sat_log):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start_time": "1"}))
    with SaveLock(str(tmp_path)):
        assert json.load(open(tmp_path / LOCK_NAME))["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid}" in sat_log.text


def test_a_lock_from_another_host_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "start_time": "1"}))
    with pytest.raises(CheckpointError, match="pid 1 on host elsewhere.*delete .*save.lock once that job has ended"):
        SaveLock(str(tmp_path)).acquire()


# ----------------------------------------------------------------------------- rotation
def test_save_keep_keeps_the_newest_and_the_resumed_from(tmp_path, tiny_args):
    args = tiny_args()
    args.save, args.save_keep = str(tmp_path), 2
    args.resumed_from = os.path.realpath(tmp_path / "1")
    model = BaseModel(args)
    for iteration in range(1, 6):
        save_checkpoint(iteration, model, None, None, args)
    assert sorted(os.listdir(tmp_path)) == ["1", "4", "5", "latest", "model_config.json"]


# ----------------------------------------------------------------------------- a failed write
def _one_rank_fails(rank: int, world_size: int, root: str) -> str:
    from sat.training.checkpointing import _raise_if_any_rank_failed

    failures = [f"{root}/rng_states_rank_00001.pt: [Errno 28] No space left on device"] if rank == 1 else []
    try:
        _raise_if_any_rank_failed(failures, f"{root}/8")
    except CheckpointError as e:
        return str(e)
    return "no error"


@pytest.mark.multiprocess
def test_a_write_failing_on_one_rank_fails_the_save_on_every_rank(tmp_path):
    messages = run_workers(_one_rank_fails, 2, str(tmp_path))
    for message in messages:
        assert "checkpoint" in message and "was not saved ('latest' still names the previous one)" in message
        assert "rank 1: " in message and "No space left on device" in message


def test_latest_stays_when_a_write_fails(two_checkpoints, tiny_args, monkeypatch):
    import sat.checkpoint.saving as saving

    def full_disk(obj, path):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(saving, "write_model_states", lambda obj, path, *fmt: full_disk(obj, path))
    args = tiny_args()
    args.save = two_checkpoints
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(3, BaseModel(args), None, None, args)
    assert open(os.path.join(two_checkpoints, "latest")).read() == "2"
