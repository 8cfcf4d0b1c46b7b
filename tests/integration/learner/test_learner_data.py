"""The learner's choice of algorithm and its data quality against a real Redis: V-trace end to end,
policy-lag accounting, dropping too-old data, skipping a backlog, refusing another algorithm's checkpoints."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from rtrl.checkpoints import CheckpointStore
from rtrl.models import default_model_config
from rtrl.services.inference.policy import Policy
from rtrl.services.learner.algorithms.dqn import DQN
from rtrl.services.learner.algorithms.ppo import PPOConfig
from rtrl.services.learner.algorithms.vtrace import VTraceConfig
from rtrl.services.learner.loop import Learner, LearnerError
from rtrl.services.learner.server import create_server
from rtrl.transitions import Transition
from rtrl.v1 import learner_pb2, learner_pb2_grpc

# What conftest's `transition` fixture produces.
OBS_SHAPE = (4, 36, 36)
ACTION_COUNT = 3
VTRACE = VTraceConfig(unroll_length=5, batch_size=4, learning_starts=4, replay_capacity=32)
PPO = PPOConfig(unroll_length=5, batch_unrolls=3, epochs=2, minibatches=2)
RESUMED_VERSION = 10


def publish_dqn_checkpoint(settings, version: int = RESUMED_VERSION) -> None:
    """A DQN checkpoint at `version`, as an earlier learner would have left it, so a learner resumes there."""
    model_config = default_model_config(OBS_SHAPE, ACTION_COUNT)
    agent = DQN(settings.config, model_config, "cpu", seed=0)
    CheckpointStore(settings.checkpoint_dir).publish(
        version,
        agent.policy_weights(),
        {"algorithm": "dqn", "model": model_config.to_json(), "updates": agent.updates},
        learner_state=agent.learner_state(),
    )


def acted(transition: Transition, *, policy_version: int, staleness_frames: int, fresh: bool = True) -> Transition:
    return replace(
        transition,
        fresh=fresh,
        policy_version=policy_version if fresh else -1,
        staleness_frames=staleness_frames if fresh else 0,
        action_obs_frame=transition.obs_frame if fresh else -1,
    )


def test_vtrace_learner_trains_on_the_stream_and_publishes_an_actor_critic_that_inference_serves(
    make_settings, publish, transition, wait_until, pending_count
) -> None:
    settings = make_settings(config=VTRACE)
    publish([replace(transition(seq), behaviour_log_prob=float(-np.log(ACTION_COUNT))) for seq in range(60)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(
            lambda: learner.status().transitions_consumed == 60 and learner.status().checkpoints_published >= 2,
            "V-trace to consume everything and publish twice",
        )
        wait_until(lambda: pending_count() == 0, "no entry left pending")
    finally:
        learner.stop()
    assert learner.failure is None
    status = learner.status()
    assert status.algorithm == "vtrace" and status.epsilon == 0.0
    # 60 steps make 12 unrolls of 5; the last one still waits for its bootstrap observation (step 60).
    assert status.replay_size == 11
    assert status.transitions_unpaired == 0

    latest = CheckpointStore(settings.checkpoint_dir).latest()
    assert latest is not None and latest.version == status.checkpoint_version
    assert latest.metadata["algorithm"] == "vtrace"
    assert latest.metadata["model"]["head"] == "actor_critic"
    assert latest.metadata["updates"] == status.updates
    policy = Policy(settings.checkpoint_dir, replica_id="replica-under-test", algorithm="vtrace")
    try:
        assert policy.load_initial()
        answer = policy.act(np.full(OBS_SHAPE, 7, dtype=np.uint8), ACTION_COUNT, None)
    finally:
        policy.close()
    assert answer.checkpoint_version == latest.version
    assert 0 <= answer.action < ACTION_COUNT
    assert answer.behaviour_log_prob < 0.0  # sampled from a softmax, so log pi(a) is a real log-probability


def test_ppo_learner_trains_each_batch_for_its_epochs_and_publishes_when_a_batch_is_done(
    make_settings, publish, transition, wait_until
) -> None:
    # Checkpoints every 1000 updates: any publication before the stop comes from the end of a batch.
    settings = make_settings(config=PPO, checkpoint_every_updates=1000)
    publish([replace(transition(seq), behaviour_log_prob=float(-np.log(ACTION_COUNT))) for seq in range(61)])
    learner = Learner(settings)
    learner.start()
    try:
        # 61 steps make 12 complete unrolls of 5, all there at once: the newest 3 make a batch, trained for
        # epochs x minibatches = 4 updates and then published; the 9 older ones are skipped, and counted.
        wait_until(lambda: learner.status().checkpoints_published >= 1, "PPO to train on a batch and publish it")
    finally:
        learner.stop()
    assert learner.failure is None
    status = learner.status()
    assert status.algorithm == "ppo" and status.epsilon == 0.0
    assert (status.updates, status.unrolls_skipped) == (4, 9)
    assert set(status.metrics) >= {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    latest = CheckpointStore(settings.checkpoint_dir).latest()
    assert latest is not None and latest.metadata["algorithm"] == "ppo"
    assert latest.metadata["model"]["head"] == "actor_critic"


def test_get_status_reports_policy_lag_staleness_and_fallbacks_of_the_transitions_used(
    make_settings, publish, transition, wait_until
) -> None:
    # learning_starts beyond what is published: the learner stays at the resumed version, so lags are known.
    settings = make_settings(config=replace(make_settings().config, learning_starts=1000))
    publish_dqn_checkpoint(settings)
    applied_ns = time.time_ns() - 500 * 1_000_000
    batch = [
        acted(transition(0), policy_version=10, staleness_frames=4),
        acted(transition(1), policy_version=7, staleness_frames=6),
        acted(transition(2), policy_version=9, staleness_frames=5),
        acted(transition(3), policy_version=0, staleness_frames=0, fresh=False),
    ]
    publish([replace(t, action_applied_unix_ns=applied_ns) for t in batch])

    learner = Learner(settings)
    server, port = create_server(settings, learner)
    server.start()
    learner.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            request = learner_pb2.LearnerServiceGetStatusRequest()
            response = wait_until(
                lambda: (r := stub.GetStatus(request, timeout=5)).transitions_consumed == 4 and r,
                "the four transitions to be consumed",
            )
    finally:
        learner.stop()
        server.stop(0).wait()
    assert response.checkpoint_version == RESUMED_VERSION and response.updates == 0
    lag = response.policy_lag
    assert (lag.transitions, lag.fresh) == (4, 3)
    assert lag.fallback_fraction == pytest.approx(0.25)
    # 10 - (10, 7, 9); the fallback's version -1 is not a lag.
    assert (lag.version_lag_min, lag.version_lag_max) == (0, 3)
    assert lag.version_lag_mean == pytest.approx(4 / 3)
    assert lag.staleness_frames.count == 3
    assert lag.staleness_frames.mean == pytest.approx(5.0)
    assert lag.staleness_frames.max == 6
    assert lag.staleness_frames.p50 == pytest.approx(5.0)
    # Applied 500 ms before publication, used after it: at least that old, whatever the machine's speed.
    assert lag.lag_ms.count == 4
    assert lag.lag_ms.mean >= 500.0 and lag.lag_ms.max >= lag.lag_ms.p50 >= 500.0
    assert response.transitions_too_old == 0 and response.transitions_skipped == 0


def test_transitions_older_than_the_version_limit_are_acknowledged_dropped_and_counted(
    make_settings, publish, transition, wait_until, pending_count
) -> None:
    settings = make_settings(config=replace(make_settings().config, learning_starts=1000), max_policy_lag_versions=2)
    publish_dqn_checkpoint(settings)
    publish(
        [
            acted(transition(0), policy_version=10, staleness_frames=1),
            acted(transition(1), policy_version=8, staleness_frames=1),  # lag 2: kept
            acted(transition(2), policy_version=7, staleness_frames=1),  # lag 3: dropped
            acted(transition(3), policy_version=0, staleness_frames=1),  # lag 10: dropped
            acted(transition(4), policy_version=0, staleness_frames=0, fresh=False),  # fallbacks never age
        ]
    )
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().transitions_consumed == 5, "all five entries consumed")
        wait_until(lambda: pending_count() == 0, "the dropped entries to be acknowledged too")
    finally:
        learner.stop()
    status = learner.status()
    assert status.transitions_too_old == 2
    assert status.env_steps == 3 and status.replay_size == 3
    assert status.lag is not None and status.lag.transitions == 3 and status.lag.version_lag_max == 2


def test_a_learner_far_behind_skips_to_the_newest_entry_counts_the_skip_and_still_handles_its_pending_entries(
    make_settings, publish, transition, wait_until, pending_count, redis_client, stream_name
) -> None:
    settings = make_settings(max_lag_entries=100)
    # Before the pause the learner had been delivered 10 entries it never acknowledged (it died).
    publish([transition(seq) for seq in range(10)])
    redis_client.xgroup_create(stream_name, settings.consumer_group, id="0")
    redis_client.xreadgroup(settings.consumer_group, settings.consumer_name, {stream_name: ">"}, count=100)
    assert pending_count() == 10
    # While it was away the gateways went on: 300 entries, three times the threshold.
    publish([transition(seq) for seq in range(10, 310)])

    learner = Learner(settings)
    learner.start()
    try:
        wait_until(
            lambda: learner.status().transitions_skipped == 300 and learner.status().transitions_consumed == 10,
            "the backlog to be skipped and the pending entries to be consumed",
        )
        publish([transition(seq) for seq in range(310, 330)])
        wait_until(lambda: learner.status().transitions_consumed == 30, "the entries published after the skip")
        wait_until(lambda: pending_count() == 0, "nothing left pending")
    finally:
        learner.stop()
    status = learner.status()
    assert status.transitions_skipped == 300 and status.backlog_skips == 1
    assert status.transitions_trimmed == 0  # Redis 6.2 cannot tell; nothing was trimmed anyway
    assert status.env_steps == 30
    group = next(g for g in redis_client.xinfo_groups(stream_name) if g["name"] == settings.consumer_group.encode())
    assert group["last-delivered-id"] == redis_client.xinfo_stream(stream_name)["last-generated-id"]


def test_a_backlog_within_the_threshold_is_read_in_full(
    make_settings, publish, transition, wait_until, pending_count
) -> None:
    settings = make_settings(max_lag_entries=100)
    publish([transition(seq) for seq in range(100)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().transitions_consumed == 100, "all 100 entries consumed")
    finally:
        learner.stop()
    assert learner.status().transitions_skipped == 0


def test_resuming_a_checkpoint_of_the_other_algorithm_says_which_one_and_what_to_set(make_settings) -> None:
    settings = make_settings()
    publish_dqn_checkpoint(settings)
    with pytest.raises(LearnerError) as caught:
        Learner(settings.with_config(VTRACE)).start()
    message = str(caught.value)
    assert "trained with 'dqn'" in message
    assert "RTRL_ALGORITHM=dqn" in message and "RTRL_CHECKPOINT_DIR" in message


def test_a_latest_pointer_that_went_backwards_is_resumed_but_versions_continue_above_the_newest_on_disk(
    make_settings, publish, transition, wait_until
) -> None:
    settings = make_settings(checkpoint_every_updates=5)
    publish_dqn_checkpoint(settings, version=RESUMED_VERSION - 2)
    publish_dqn_checkpoint(settings, version=RESUMED_VERSION)
    # latest.json restored from an older copy: replicas that loaded v10 would ignore a new v9.
    store = CheckpointStore(settings.checkpoint_dir)
    (settings.checkpoint_dir / "latest.json").write_bytes((settings.checkpoint_dir / "v000000008.json").read_bytes())
    publish([transition(seq) for seq in range(60)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().checkpoints_published >= 1, "a publication after the resume")
    finally:
        learner.stop()
    latest = store.latest()
    assert latest is not None and latest.version > RESUMED_VERSION
