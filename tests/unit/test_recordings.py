"""The recording scheduler of `rtrl up --record-every` against a real checkpoint directory and a stand-in for
`rtrl play` (a script that writes the video file and prints play's JSON): which versions it records, one at
a time, what goes into index.jsonl, and that a failing recording is logged and does not stop the next."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
import torch

from rtrl.checkpoints import CheckpointStore
from rtrl.recordings import INDEX, RecordingScheduler, read_index

INTERVAL_S = 10.0

# Stands in for `rtrl play`: after FAKE_DELAY_S reads the newest version, logs its arguments and RTRL_CPUS,
# sleeps FAKE_SLEEP_S, fails for version FAKE_FAIL_VERSION, else writes the --record file ({version} filled in)
# and prints play's JSON.
FAKE_PLAY = """
import json, os, sys, time
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
time.sleep(float(os.environ.get("FAKE_DELAY_S", "0")))
version = json.load(open(os.path.join(value("--checkpoint-dir"), "latest.json")))["version"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "cpus": os.environ.get("RTRL_CPUS"), "version": version}) + "\\n")
time.sleep(float(os.environ.get("FAKE_SLEEP_S", "0")))
if version == int(os.environ.get("FAKE_FAIL_VERSION", "-1")):
    print("rtrl play: the game failed: boom", file=sys.stderr)
    sys.exit(1)
path = value("--record").replace("{version}", str(version))
open(path, "wb").write(b"video")
episode = {"episode": 1, "return": version * 10.0, "frames": 100 + version}
print(json.dumps({"episodes": [episode], "mean_return": version * 10.0, "checkpoint_version": version, "record": path}))
"""


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def publish(directory: Path, version: int) -> None:
    CheckpointStore(directory).publish(version, {"w": torch.zeros(1)}, {"model": {}})


@pytest.fixture
def setup(tmp_path: Path):
    fake = tmp_path / "fake_play.py"
    fake.write_text(FAKE_PLAY)
    log = tmp_path / "fake.log"
    clock = FakeClock()

    def make(**child_env: str) -> RecordingScheduler:
        return RecordingScheduler(
            env="gym:CartPole-v1",
            checkpoint_dir=tmp_path / "checkpoints",
            directory=tmp_path / "run" / "recordings",
            log_dir=tmp_path / "run" / "logs",
            interval_s=INTERVAL_S,
            child_env={"FAKE_LOG": str(log), "RTRL_CPUS": "0", **child_env},
            play_command=[sys.executable, str(fake)],
            now_s=clock,
        )

    return make, clock, tmp_path, log


def runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_runs(log: Path, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(runs(log)) < count:
        assert time.monotonic() < deadline, "the recording did not start"
        time.sleep(0.05)


def collect(scheduler: RecordingScheduler, timeout_s: float = 30.0) -> None:
    """Polls (the clock standing still, so nothing new starts) until the running recording is collected."""
    deadline = time.monotonic() + timeout_s
    while scheduler.busy:
        assert time.monotonic() < deadline, "the recording did not end"
        scheduler.poll()
        time.sleep(0.05)


def test_nothing_is_recorded_before_the_learner_publishes_or_before_the_interval(setup):
    make, clock, tmp_path, log = setup
    scheduler = make()
    clock.now_s = INTERVAL_S
    scheduler.poll()
    assert not scheduler.busy
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S + 1  # the turn at INTERVAL_S found nothing; the next is at 2 * INTERVAL_S
    scheduler.poll()
    assert not scheduler.busy and runs(log) == []


def test_each_newer_checkpoint_is_recorded_once_into_the_index(setup):
    make, clock, tmp_path, log = setup
    scheduler = make()
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    scheduler.poll()
    collect(scheduler)
    clock.now_s = 2 * INTERVAL_S
    scheduler.poll()  # no newer version: nothing played
    assert not scheduler.busy
    publish(tmp_path / "checkpoints", 2)
    clock.now_s = 3 * INTERVAL_S
    scheduler.poll()
    collect(scheduler)

    assert [run["version"] for run in runs(log)] == [1, 2]
    recordings = tmp_path / "run" / "recordings"
    entries = read_index(recordings / INDEX)
    assert [(e["checkpoint_version"], e["return"], e["frames"]) for e in entries] == [(1, 10.0, 101), (2, 20.0, 102)]
    assert [Path(str(e["path"])).name for e in entries] == ["v1.gif", "v2.gif"]
    assert all((recordings / f"v{v}.gif").read_bytes() == b"video" for v in (1, 2))
    assert all(isinstance(e["unix_ms"], int) and e["unix_ms"] > 1_600_000_000_000 for e in entries)
    assert scheduler.recorded == 2 and scheduler.failures == 0


def test_the_command_plays_one_greedy_fast_episode_at_nice_19_off_the_learners_cpus(setup):
    make, clock, tmp_path, log = setup
    scheduler = make()
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    scheduler.poll()
    collect(scheduler)
    [run] = runs(log)
    args = run["args"]
    assert args[args.index("--env") + 1] == "gym:CartPole-v1"
    assert args[args.index("--episodes") + 1] == "1"
    assert {"--greedy", "--fast", "--json"} <= set(args)
    assert args[args.index("--nice") + 1] == "19"
    assert args[args.index("--record") + 1] == str(tmp_path / "run" / "recordings" / "v{version}.gif")
    assert run["cpus"] == "0", "the child gets the environment rtrl up gives it (RTRL_CPUS: the non-learner CPUs)"


def test_a_recording_that_played_a_newer_version_than_was_due_is_not_repeated(setup):
    make, clock, tmp_path, log = setup
    scheduler = make(FAKE_DELAY_S="1")
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    scheduler.poll()
    publish(tmp_path / "checkpoints", 2)  # before the player reads which version is the newest
    collect(scheduler)
    clock.now_s = 2 * INTERVAL_S
    scheduler.poll()
    assert not scheduler.busy
    assert [run["version"] for run in runs(log)] == [2]
    assert [e["checkpoint_version"] for e in read_index(tmp_path / "run" / "recordings" / INDEX)] == [2]


def test_only_one_recording_plays_at_a_time(setup):
    make, clock, tmp_path, log = setup
    scheduler = make(FAKE_SLEEP_S="1.5")
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    scheduler.poll()
    wait_for_runs(log, 1)
    publish(tmp_path / "checkpoints", 2)
    clock.now_s = 2 * INTERVAL_S
    scheduler.poll()  # v1 still plays: this turn is skipped
    assert scheduler.skipped_busy == 1
    collect(scheduler)
    assert [run["version"] for run in runs(log)] == [1]
    clock.now_s = 3 * INTERVAL_S
    scheduler.poll()
    collect(scheduler)
    assert [run["version"] for run in runs(log)] == [1, 2]


def test_a_failed_recording_is_logged_with_its_output_and_the_next_goes_on(setup, caplog):
    make, clock, tmp_path, _ = setup
    scheduler = make(FAKE_FAIL_VERSION="1")
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    with caplog.at_level(logging.WARNING, logger="rtrl.recordings"):
        scheduler.poll()
        collect(scheduler)
    [record] = caplog.records
    message = record.getMessage()
    assert "the recording of checkpoint 1 failed (it exited with code 1); the run goes on" in message
    assert "rtrl play: the game failed: boom" in message
    assert scheduler.failures == 1 and read_index(tmp_path / "run" / "recordings" / INDEX) == []
    clock.now_s = 2 * INTERVAL_S
    scheduler.poll()  # the failed version is not tried again
    assert not scheduler.busy
    publish(tmp_path / "checkpoints", 2)
    clock.now_s = 3 * INTERVAL_S
    scheduler.poll()
    collect(scheduler)
    assert [e["checkpoint_version"] for e in read_index(tmp_path / "run" / "recordings" / INDEX)] == [2]


def test_stop_ends_a_recording_that_still_plays(setup):
    make, clock, tmp_path, log = setup
    scheduler = make(FAKE_SLEEP_S="60")
    publish(tmp_path / "checkpoints", 1)
    clock.now_s = INTERVAL_S
    scheduler.start()
    wait_for_runs(log, 1)
    started = time.monotonic()
    scheduler.stop()
    assert time.monotonic() - started < 5.0
    assert not scheduler.busy and read_index(tmp_path / "run" / "recordings" / INDEX) == []


def test_the_index_reader_skips_a_line_being_written(tmp_path):
    index = tmp_path / INDEX
    index.write_text('{"checkpoint_version": 1, "return": 2.0}\n{"checkpoint_vers')
    assert read_index(index) == [{"checkpoint_version": 1, "return": 2.0}]
    assert read_index(tmp_path / "missing.jsonl") == []
