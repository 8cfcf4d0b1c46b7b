"""The learner's gRPC server on port 0, and `python -m rtrl.services.learner` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from rtrl.checkpoints import CheckpointStore
from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port
from rtrl.services.learner.loop import Learner
from rtrl.services.learner.server import SERVICE_NAME, create_server
from rtrl.v1 import learner_pb2, learner_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[3]


def health(channel: grpc.Channel, service: str = "") -> str:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_get_status_reports_the_learner_and_health_follows_it(make_settings, publish, transition, wait_until) -> None:
    settings = make_settings(port=0)
    learner = Learner(settings)
    server, port = create_server(settings, learner)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert port > 0
        assert health(channel) == "NOT_SERVING"  # the learner is not running yet
        assert health(channel, SERVICE_NAME) == "NOT_SERVING"
        assert SERVICE_NAME in ProtoReflectionDescriptorDatabase(channel).get_services()

        publish([transition(seq) for seq in range(40)])
        learner.start()
        wait_until(lambda: health(channel) == "SERVING", "health to become SERVING")
        assert health(channel, SERVICE_NAME) == "SERVING"

        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        request = learner_pb2.LearnerServiceGetStatusRequest()
        response = wait_until(
            lambda: (
                (r := stub.GetStatus(request, timeout=5)).checkpoints_published >= 1 and r.stream_length == 40 and r
            ),
            "a checkpoint and fresh stream statistics in GetStatus",
        )
        assert response.algorithm == "dqn"
        assert response.transitions_consumed == 40
        assert response.env_steps == 40
        assert response.replay_size == 40
        assert response.updates >= 5
        assert response.checkpoint_version >= 1
        assert response.checkpoint_published_unix_ms > 0
        assert response.stream_pending == 0
        assert 0.0 < response.epsilon <= 1.0
        assert response.uptime_s > 0

        learner.stop()
        assert health(channel) == "NOT_SERVING"
    finally:
        learner.stop()
        channel.close()
        server.stop(0).wait()


def run_module(env: dict[str, str], **options: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rtrl.services.learner"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        text=True,
        **options,  # type: ignore[call-overload]
    )


def test_an_invalid_setting_exits_2_with_a_message_naming_the_variable() -> None:
    process = run_module({"RTRL_CHECKPOINT_EVERY_UPDATES": "abc"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "RTRL_CHECKPOINT_EVERY_UPDATES" in stderr
    assert "integer" in stderr


def test_the_process_serves_until_sigterm_and_writes_a_final_checkpoint(
    redis_server, stream_name, publish, transition, wait_until, tmp_path
) -> None:
    port = free_port()
    checkpoint_dir = tmp_path / "checkpoints"
    publish([transition(seq) for seq in range(40)])
    log_path = tmp_path / "learner.log"
    with open(log_path, "w") as log:
        process = run_module(
            {
                "RTRL_LEARNER_PORT": str(port),
                "RTRL_REDIS_URL": redis_server.url,
                "RTRL_STREAM": stream_name,
                "RTRL_CHECKPOINT_DIR": str(checkpoint_dir),
                # Only the final checkpoint is written, so finding one proves the shutdown path.
                "RTRL_CHECKPOINT_EVERY_UPDATES": "1000000",
                "RTRL_CHECKPOINT_EVERY_S": "0",
                "RTRL_LEARNER_DEVICE": "cpu",
                "RTRL_DQN_LEARNING_STARTS": "16",
                "RTRL_DQN_BATCH_SIZE": "8",
                "RTRL_DQN_BUFFER_SIZE": "1000",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        address = f"127.0.0.1:{port}"
        wait_until(
            lambda: process.poll() is not None or health_status(address) == "SERVING", "the learner to serve", 120
        )
        assert process.poll() is None, log_path.read_text()
        with grpc.insecure_channel(address) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            request = learner_pb2.LearnerServiceGetStatusRequest()
            wait_until(lambda: stub.GetStatus(request, timeout=5).updates > 0, "training in the process")
            assert CheckpointStore(checkpoint_dir).latest() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    latest = CheckpointStore(checkpoint_dir).latest()
    assert latest is not None, log_path.read_text()
    assert latest.version == 1
    assert latest.metadata["updates"] > 0
    assert "received SIGTERM" in log_path.read_text()


def test_a_learner_killed_while_training_restarts_and_between_both_runs_uses_every_published_transition(
    redis_server, stream_name, publish, transition, wait_until, redis_client, pending_count, tmp_path
) -> None:
    """SIGKILL gives the learner no chance to clean up: what it read but had not acknowledged stays pending.

    Accounting: an entry is acknowledged only after it is in the replay, so after the kill every published
    entry is either acknowledged by run 1 (used), pending (delivered, not acknowledged) or undelivered.
    Run 2, under the same consumer name, must consume exactly the pending plus the undelivered ones plus
    what was published while it was down: fewer would be a loss, more a re-use of acknowledged entries.
    """
    checkpoint_dir = tmp_path / "checkpoints"
    env = {
        "RTRL_REDIS_URL": redis_server.url,
        "RTRL_STREAM": stream_name,
        "RTRL_CONSUMER_NAME": "learner-killed",
        "RTRL_CHECKPOINT_DIR": str(checkpoint_dir),
        "RTRL_CHECKPOINT_EVERY_UPDATES": "5",
        "RTRL_CHECKPOINT_KEEP": "1000",
        "RTRL_LEARNER_DEVICE": "cpu",
        "RTRL_DQN_LEARNING_STARTS": "16",
        "RTRL_DQN_BATCH_SIZE": "8",
        "RTRL_DQN_BUFFER_SIZE": "1000",
    }
    request = learner_pb2.LearnerServiceGetStatusRequest()

    def start(log_name: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        with open(tmp_path / log_name, "w") as log:
            process = run_module({**env, "RTRL_LEARNER_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{port}"
        wait_until(lambda: process.poll() is not None or health_status(address) == "SERVING", "the learner", 120)
        assert process.poll() is None, (tmp_path / log_name).read_text()
        return process, address

    publish([transition(seq) for seq in range(200)])
    first, address = start("first.log")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            wait_until(lambda: stub.GetStatus(request, timeout=5).checkpoints_published >= 1, "run 1 to train")
        # More data arrives while it trains; the kill lands somewhere in reading, training or publishing.
        publish([transition(seq) for seq in range(200, 300)])
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    store = CheckpointStore(checkpoint_dir)
    version_before = store.latest()
    assert version_before is not None

    pending_at_kill = pending_count()
    position = next(
        g["last-delivered-id"] for g in redis_client.xinfo_groups(stream_name) if g["name"] == b"learner"
    ).decode()
    undelivered_at_kill = len(redis_client.xrange(stream_name, min="(" + position, max="+"))
    acknowledged_by_first = 300 - pending_at_kill - undelivered_at_kill
    assert acknowledged_by_first > 0
    # The gateways do not wait for a dead learner.
    publish([transition(seq) for seq in range(300, 350)])

    second, address = start("second.log")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            expected = pending_at_kill + undelivered_at_kill + 50
            status = wait_until(
                lambda: (
                    (r := stub.GetStatus(request, timeout=5)).transitions_consumed >= expected
                    and r.checkpoints_published >= 1
                    and r
                ),
                "run 2 to consume what run 1 left and publish",
            )
            assert status.transitions_consumed == expected
        wait_until(lambda: pending_count() == 0, "nothing left pending")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    assert acknowledged_by_first + status.transitions_consumed == 350
    group = next(g for g in redis_client.xinfo_groups(stream_name) if g["name"] == b"learner")
    assert group["pending"] == 0
    assert group["last-delivered-id"] == redis_client.xinfo_stream(stream_name)["last-generated-id"]
    after = store.latest()
    assert after is not None and after.version > version_before.version
    versions = sorted(int(p.stem[1:]) for p in checkpoint_dir.glob("v*.json"))
    assert versions == list(range(1, after.version + 1))
