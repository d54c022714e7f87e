"""Dead workers and ranks: a killed decode worker or a failing host thread raises in the main process
within seconds; under torchrun a killed rank takes the other down; without torchrun's agent, a
silent rank makes its peer fail after `--dist-timeout`; Ctrl-C on two ranks leaves a valid
checkpoint and no temporary files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastssl.data.faults import clean_shards
from fastssl.errors import WorkerError
from fastssl.host.reader import BatchReader
from fastssl.loader import SSLLoader
from fastssl.recipes import SimCLR
from fastssl.train.checkpoint import load_checkpoint

RECIPE = SimCLR(size=24)
TRAIN = ["--backbone", "small_cnn", "--width", "4", "--size", "24", "--batch-size", "4", "--quiet",
         "--log-keys", "--workers", "1", "--log-every", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("processes") / "shards"
    clean_shards(root, shards=3, per_shard=16)
    return root


@pytest.mark.timeout(120)
def test_a_killed_feeder_process_raises_a_worker_error_within_seconds(shards) -> None:
    pytest.importorskip("nvidia.dali")
    with SSLLoader(shards, RECIPE, 2, backend="dali", device="cpu", num_threads=1) as loader:
        before = set(multiprocessing.active_children())
        batches = iter(loader)
        next(batches)
        feeders = [w for w in multiprocessing.active_children() if w not in before]
        assert [w.name for w in feeders] == ["fastssl-feeder"]
        start = time.monotonic()
        os.kill(feeders[0].pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"feeder process \(pid \d+\) died \(killed by signal 9\)"):
            for _ in batches:
                pass
        assert time.monotonic() - start < 20


@pytest.mark.timeout(120)
def test_a_killed_decode_worker_raises_a_worker_error_within_seconds(shards) -> None:
    with SSLLoader(shards, RECIPE, 2, backend="kornia", device="cpu", num_threads=2) as loader:
        before = set(multiprocessing.active_children())  # children of earlier tests are not ours
        batches = iter(loader)
        next(batches)
        workers = [w for w in multiprocessing.active_children() if w not in before]
        assert len(workers) == 2
        start = time.monotonic()
        # WorkerError is a RuntimeError: torch's own SIGCHLD handler may raise its RuntimeError in
        # the caller's code between two batches, before the loader can name it
        with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly") as info:
            os.kill(workers[0].pid, signal.SIGKILL)
            for _ in batches:
                pass
        assert time.monotonic() - start < 20
    assert isinstance(info.value, WorkerError) or "DataLoader worker" in str(info.value)


@pytest.mark.timeout(120)
def test_a_failing_host_side_raises_its_cause_from_the_dali_iterator(shards, monkeypatch) -> None:
    pytest.importorskip("nvidia.dali")
    real = BatchReader.__call__

    def failing(self, number, into=None):
        if number == 2:
            raise OSError("the disk went away")
        return real(self, number, into)

    monkeypatch.setattr(BatchReader, "__call__", failing)
    start = time.monotonic()
    with (
        SSLLoader(shards, RECIPE, 2, backend="dali", device="cpu", num_threads=1) as loader,
        pytest.raises(OSError, match="the disk went away"),
    ):
        for _ in loader:
            pass
    assert time.monotonic() - start < 20


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _log(run: Path, name: str):  # noqa: ANN202 - an open file
    """A file for a child's stderr: a pipe nobody reads while the test waits could fill and block it."""
    run.parent.mkdir(parents=True, exist_ok=True)
    return open(run.parent / f"{run.name}-{name}.log", "w")  # noqa: SIM115 - closed with the child


def _torchrun(run: Path, *args: str, **popen: object) -> subprocess.Popen:
    with _log(run, "torchrun") as err:
        command = [*TORCHRUN, *args]
        return subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=err, **popen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_steps(run: Path, rank: int, steps: int, processes: list[subprocess.Popen]) -> None:
    keys = run / f"keys-rank{rank}.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if keys.exists() and len(keys.read_text().splitlines()) >= steps:
            return
        if any(p.poll() is not None for p in processes):
            raise AssertionError("a rank exited before training started")
        time.sleep(0.05)
    raise AssertionError("training did not start")


def _rank_pid(run: Path, rank: int, launcher: int) -> int:
    """The pid of the torchrun worker with RANK=rank training into `run`: a child of the launcher,
    never one of that rank's own decode workers (same command line and environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), -1)
        if (
            parent == launcher
            and str(run).encode() in cmdline
            and f"RANK={rank}".encode() in environ
            and b"pretrain" in cmdline
        ):
            return int(entry.name)
    raise AssertionError(f"no process for rank {rank}")


def _gone_or_zombie(pid: int) -> bool:
    try:
        return b"Z" in Path(f"/proc/{pid}/stat").read_bytes()[:64]
    except OSError:  # reaped, even between two looks
        return True


def _pretrain(shards: Path, run: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "fastssl.cli",
        "pretrain",
        str(shards),
        "--out",
        str(run),
        "--epochs",
        "100",
        *TRAIN,
        *extra,
    ]


@pytest.mark.timeout(300)
def test_under_torchrun_killing_one_rank_stops_the_other(shards, tmp_path) -> None:
    run = tmp_path / "run"
    launcher = _torchrun(run, "--monitor-interval", "0.5", *_pretrain(shards, run))
    _wait_for_steps(run, 1, 2, [launcher])
    survivor = _rank_pid(run, 0, launcher.pid)
    os.kill(_rank_pid(run, 1, launcher.pid), signal.SIGKILL)
    start = time.monotonic()
    launcher.wait(timeout=90)
    assert launcher.returncode != 0 and time.monotonic() - start < 60
    assert _gone_or_zombie(survivor)


def _launch_by_hand(shards: Path, run: Path, timeout_s: int) -> list[subprocess.Popen]:
    """Two ranks started as a multi-node launcher would, without torchrun's agent to watch them,
    both training (two steps done on rank 1). The port is picked free, and another process may take
    it before rank 0 listens: a launch that fails on a taken port is retried on a new one."""
    for _ in range(3):
        port = str(_free_port())
        ranks = []
        for r in (0, 1):
            with _log(run, f"rank{r}") as err:
                ranks.append(
                    subprocess.Popen(
                        [sys.executable, *_pretrain(shards, run, "--dist-timeout", str(timeout_s))],
                        env=_env(
                            RANK=str(r),
                            LOCAL_RANK=str(r),
                            WORLD_SIZE="2",
                            LOCAL_WORLD_SIZE="2",
                            MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=port,
                        ),  # fmt: skip
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        try:
            _wait_for_steps(run, 1, 2, ranks)
            return ranks
        except AssertionError:
            for process in ranks:
                process.kill()
                process.wait()
            logs = "".join((run.parent / f"{run.name}-rank{r}.log").read_text() for r in (0, 1))
            if "address already in use" not in logs.lower():
                raise AssertionError(f"the ranks did not start training:\n{logs[-3000:]}") from None
    raise AssertionError("three free ports were taken before rank 0 could listen")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_without_an_agent_a_dead_or_silent_rank_fails_its_peer_in_bounded_time(shards, tmp_path, how) -> None:
    run = tmp_path / how
    # The timeout covers start-up collectives too, on a loaded VM: generous, and the bounds follow it.
    timeout_s = 20
    ranks = _launch_by_hand(shards, run, timeout_s=timeout_s)
    try:
        ranks[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        ranks[0].wait(timeout=150)
        waited = time.monotonic() - start
        assert ranks[0].returncode != 0
        assert waited < timeout_s + 60, f"rank 0 took {waited:.0f} s to fail"
        if how == "stopped":  # nothing but the timeout can tell a silent peer from a slow one
            assert waited >= timeout_s / 2
    finally:
        for process in ranks:
            process.kill()
            process.wait()


@pytest.mark.timeout(300)
def test_ctrl_c_on_two_ranks_leaves_a_valid_checkpoint_and_no_temporary_files(shards, tmp_path) -> None:
    run = tmp_path / "interrupted"
    launcher = _torchrun(run, *_pretrain(shards, run), start_new_session=True)
    _wait_for_steps(run, 1, 3, [launcher])
    os.killpg(launcher.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    launcher.wait(timeout=120)
    assert launcher.returncode != 0
    state = load_checkpoint(run / "checkpoint.pt")
    steps = [len((run / f"keys-rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert state["step"] == steps[0] == steps[1] >= 3
    assert len(state["loaders"]) == 2
    assert not [p for p in run.iterdir() if "tmp" in p.name]


def _skip_records(run: Path) -> list[dict]:
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "skipped"]


def test_pretraining_with_skip_lists_every_bad_sample_in_the_metrics_file(tmp_path) -> None:
    from fastssl.data.faults import plant_fault
    from fastssl.train import PretrainConfig, pretrain

    planted = plant_fault(tmp_path / "set", "bad_label")
    config = PretrainConfig(
        data=str(planted.root), out=str(tmp_path / "run"), backbone="small_cnn", width=4, size=24,
        batch_size=4, epochs=2, on_error="skip", progress=False, num_threads=1,
    )  # fmt: skip
    summary = pretrain(config)
    records = _skip_records(tmp_path / "run")
    assert summary["skipped"] == 2  # once per epoch
    assert [(r["epoch"], r["shard"], r["key"]) for r in records] == [(e, *planted.bad[0]) for e in (0, 1)]
    assert all(planted.says in r["reason"] and r["rank"] == 0 and r["step"] > 0 for r in records)


@pytest.mark.timeout(300)
def test_two_ranks_with_skip_gather_every_rank_s_skips_into_the_metrics_file(tmp_path) -> None:
    from fastssl.data.faults import plant_fault

    planted = plant_fault(tmp_path / "set", "missing_shard")
    run = tmp_path / "run"
    command = ["-m", "fastssl.cli", "pretrain", str(planted.root), "--out", str(run), "--epochs", "1"]
    done = subprocess.run(
        [*TORCHRUN, *command, "--on-error", "skip", *TRAIN],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = _skip_records(run)
    assert sorted((r["shard"], r["key"]) for r in records) == sorted(planted.bad)
    assert {r["rank"] for r in records} == {0, 1}
    assert f"skipped {len(planted.bad)} bad samples" in done.stdout


def test_decode_workers_leave_a_caller_s_gc_freeze_alone(shards) -> None:
    import gc

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with SSLLoader(shards, RECIPE, 8, backend="kornia", device="cpu", num_threads=2) as loader:
            assert sum(len(b["key"]) for b in loader) == 48
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen (some frozen objects die by refcount)
    finally:
        gc.unfreeze()
    with SSLLoader(shards, RECIPE, 8, backend="kornia", device="cpu", num_threads=2) as loader:
        assert sum(len(b["key"]) for b in loader) == 48
    assert gc.get_freeze_count() == 0  # its own freeze around the fork is undone
