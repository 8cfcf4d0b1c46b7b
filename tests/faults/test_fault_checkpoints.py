"""Checkpoint directory faults under a running inference replica process and a running learner process.

Faulty checkpoints are prepared in a staging directory with the real `CheckpointStore`, damaged there
and then moved into the watched directory the way a publisher would (files first, `latest.json` last,
each by an atomic rename), so the replica meets exactly the damaged state under test:

- weights with a flipped byte, weights cut in half (a half-written file), a `latest.json` cut in half,
  weights that do not fit the model their metadata names: never loaded, counted in GetStatus with the
  reason, and the previous version keeps answering Act;
- `latest.json` going back to an older version: ignored, the newer version keeps serving;
- a full disk while the learner publishes: a real tmpfs of a few megabytes (mounted for the test; it
  needs root, which CI has) filled by a ballast file. Publications fail with ENOSPC and are counted
  with their error, nothing partial is left behind, the replica keeps serving, and publishing resumes
  by itself once space is free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import torch
from fault_processes import ProcessGroup, ServiceProcess, learner_env, learner_status, replica_env, wait_until

from rtrl.checkpoints import LATEST, CheckpointStore
from rtrl.local_redis import LocalRedis, free_port
from rtrl.models import ModelConfig, build_model
from rtrl.tensors import to_proto
from rtrl.transitions import STREAM_FIELD, Transition, encode
from rtrl.v1 import inference_pb2, inference_pb2_grpc

CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=4, hidden_size=16)
OTHER_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=4, hidden_size=32)
# Small enough for the test's ballast to fill, roomy beside the learner's own checkpoints (about 2 MB each,
# weights and learner state; the full-disk test publishes one every 100 updates).
TMPFS_SIZE = "64m"


def served_version(replica: ServiceProcess, observation: np.ndarray | None = None, action_count: int = 4) -> int:
    """The checkpoint version that answers Act (observations of CONFIG unless told otherwise)."""
    observation = np.zeros(3, dtype=np.float32) if observation is None else observation
    with grpc.insecure_channel(replica.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ActRequest(
            observation=to_proto(observation), gateway_id="faults", action_count=action_count
        )
        return int(stub.Act(request, timeout=5).checkpoint_version)


def replica_status(replica: ServiceProcess) -> inference_pb2.InferenceServiceGetStatusResponse:
    with grpc.insecure_channel(replica.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=5)


class Publisher:
    """Writes checkpoints into `live` through a staging store, optionally damaged on the way."""

    def __init__(self, live: Path, staging: Path) -> None:
        self.live = live
        self.staging = CheckpointStore(staging, keep=1000)
        live.mkdir(parents=True, exist_ok=True)

    def publish(
        self,
        version: int,
        damage: Callable[[Path], None] = lambda staged: None,
        weights_config: ModelConfig = CONFIG,
    ) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(version)
            model = build_model(weights_config)
        checkpoint = self.staging.publish(version, model.state_dict(), {"model": CONFIG.to_json(), "epsilon": 0.0})
        damage(self.staging.directory)
        names = [entry["name"] for entry in checkpoint.metadata["files"].values()]
        for name in [*names, f"v{version:09d}.json", LATEST]:
            temporary = self.live / f".{name}.incoming"
            shutil.copyfile(self.staging.directory / name, temporary)
            os.replace(temporary, self.live / name)


def flip_a_byte(version: int) -> Callable[[Path], None]:
    def damage(staged: Path) -> None:
        path = staged / f"v{version:09d}.safetensors"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    return damage


def cut_in_half(name: str) -> Callable[[Path], None]:
    def damage(staged: Path) -> None:
        path = staged / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


@pytest.fixture
def replica(processes: ProcessGroup, local_redis: LocalRedis, registry_key: str, tmp_path: Path) -> ServiceProcess:
    return processes.start(
        "replica",
        "rtrl.services.inference",
        replica_env(local_redis.url, registry_key, tmp_path / "live", RTRL_CHECKPOINT_POLL_S="0.05"),
    )


def test_damaged_checkpoints_are_never_loaded_and_the_previous_version_keeps_serving(
    replica: ServiceProcess, tmp_path: Path, resilience_ledger
) -> None:
    publisher = Publisher(tmp_path / "live", tmp_path / "staging")
    publisher.publish(1)
    wait_until(lambda: served_version(replica) == 1, "the replica to serve version 1")
    faults = [
        ("checkpoint weights with a flipped byte", 2, flip_a_byte(2), CONFIG, "SHA-256"),
        ("half-written checkpoint weights", 3, cut_in_half("v000000003.safetensors"), CONFIG, "SHA-256"),
        ("half-written latest.json", 4, cut_in_half(LATEST), CONFIG, "not valid JSON"),
        ("checkpoint weights that do not fit their model config", 5, lambda staged: None, OTHER_CONFIG, "do not fit"),
    ]
    for name, version, damage, weights_config, reason in faults:
        with resilience_ledger.fault(name) as notes:
            failures_before = replica_status(replica).checkpoint_load_failures
            publisher.publish(version, damage, weights_config)
            status = wait_until(
                lambda before=failures_before: (s := replica_status(replica)).checkpoint_load_failures > before and s,
                f"the replica to refuse the checkpoint with {name}",
            )
            assert reason in status.checkpoint_load_last_error, status.checkpoint_load_last_error
            assert served_version(replica) == 1
            notes.append(os.path.basename(status.checkpoint_load_last_error)[:70])

    publisher.publish(6)
    wait_until(lambda: served_version(replica) == 6, "the replica to serve a good version 6")
    with resilience_ledger.fault("latest.json going back to an older version"):
        failures_before = replica_status(replica).checkpoint_load_failures
        shutil.copyfile(tmp_path / "live" / "v000000001.json", tmp_path / "live" / ".latest.incoming")
        os.replace(tmp_path / "live" / ".latest.incoming", tmp_path / "live" / LATEST)
        # The watcher polls every 50 ms; a dozen polls see the older pointer.
        time.sleep(0.6)
        assert served_version(replica) == 6
        assert replica_status(replica).checkpoint_load_failures == failures_before


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a full disk is simulated with a tmpfs, and mounting one was refused: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def vector_transition(seq: int) -> Transition:
    return Transition(
        gateway_id="gw-faults",
        seq=seq,
        episode=seq // 20,
        step=seq % 20,
        obs_frame=seq,
        observation=np.full((8,), seq % 256, dtype=np.uint8),
        action=seq % 3,
        action_count=3,
        reward=1.0 if seq % 7 == 0 else 0.0,
        terminated=seq % 20 == 19,
        truncated=False,
        fresh=True,
        fallback_policy=1,
        staleness_frames=2,
        policy_version=-1,
        behaviour_log_prob=0.0,
        obs_captured_unix_ns=0,
        action_applied_unix_ns=0,
        action_obs_frame=seq,
    )


def fill(ballast: Path) -> None:
    """Appends to `ballast` until the file system is full. Unbuffered: a buffered file that met the full
    disk would raise ENOSPC again when closed, flushing what it still held."""
    with open(ballast, "ab", buffering=0) as f:
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:
            pass


def test_a_full_disk_fails_publications_visibly_leaves_nothing_partial_and_publishing_resumes(
    small_tmpfs: Path,
    processes: ProcessGroup,
    local_redis: LocalRedis,
    registry_key: str,
    stream_name: str,
    resilience_ledger,
) -> None:
    client = redis.Redis.from_url(local_redis.url)
    try:
        for seq in range(200):
            client.xadd(stream_name, {STREAM_FIELD: encode(vector_transition(seq))})
    finally:
        client.close()
    port = free_port()
    address = f"127.0.0.1:{port}"
    # The learner's own checkpoints must not fill the tmpfs before the ballast does, or the ballast frees
    # too little for publishing to resume (24 MB, all versions kept, one every 10 updates: 2 of 2 runs
    # here). Five kept versions stay under 10 MB.
    learner = learner_env(
        local_redis.url,
        stream_name,
        small_tmpfs,
        port,
        RTRL_CHECKPOINT_EVERY_UPDATES="100",
        RTRL_CHECKPOINT_KEEP="5",
    )
    ballast = small_tmpfs / "ballast"
    processes.start("learner", "rtrl.services.learner", learner, port=port)
    replica = processes.start(
        "replica",
        "rtrl.services.inference",
        replica_env(local_redis.url, registry_key, small_tmpfs, RTRL_CHECKPOINT_POLL_S="0.05"),
    )
    store = CheckpointStore(small_tmpfs)

    def serving() -> int:
        return served_version(replica, np.zeros(8, dtype=np.uint8), action_count=3)

    wait_until(lambda: learner_status(address).checkpoints_published >= 1, "a first checkpoint")
    with resilience_ledger.fault(
        f"checkpoint directory full ({TMPFS_SIZE} tmpfs) while the learner publishes"
    ) as notes:
        fill(ballast)
        published_when_full = learner_status(address).checkpoints_published
        failures_before = learner_status(address).checkpoint_publish_failures
        status = wait_until(
            lambda: (s := learner_status(address)).checkpoint_publish_failures >= failures_before + 2 and s,
            "publications to fail on the full disk",
        )
        assert "No space left" in status.checkpoint_publish_last_error, status.checkpoint_publish_last_error
        # What latest.json names is complete and verified; nothing half-written stays behind.
        latest = store.latest()
        assert latest is not None
        store.load_weights(latest)
        assert not [p.name for p in small_tmpfs.iterdir() if p.name.endswith(".tmp")]
        served = wait_until(lambda: (v := serving()) >= 1 and v, "the replica to serve a version")
        assert served <= latest.version
        assert learner_status(address).checkpoints_published <= published_when_full + 1
        notes.append(
            f"{status.checkpoint_publish_failures} publications failed with: "
            + status.checkpoint_publish_last_error.split(": ")[-1]
        )

        ballast.unlink()
        wait_until(
            lambda: learner_status(address).checkpoints_published > published_when_full + 1,
            "publishing to resume once there is space",
        )
        newest = store.latest()
        assert newest is not None and newest.version > latest.version
        wait_until(lambda: serving() >= newest.version, "the replica to serve the resumed version")
