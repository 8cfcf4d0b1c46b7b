"""The learner against a real Redis and a real checkpoint directory: consume, train, publish, resume."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from rtrl.checkpoints import CheckpointStore
from rtrl.local_redis import LocalRedis, free_port
from rtrl.models import ModelConfig, QNetwork
from rtrl.services.learner.algorithms.dqn import epsilon_at
from rtrl.services.learner.loop import Learner, LearnerError
from rtrl.services.learner.stream import TransitionStream


def published_versions(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.glob("v*.json") if (m := re.match(r"^v(\d{9})\.json$", p.name)))


def test_learner_consumes_everything_trains_and_publishes_increasing_versions(
    make_settings, publish, transition, wait_until, pending_count, redis_client, stream_name
) -> None:
    settings = make_settings()
    publish([transition(seq) for seq in range(60)])
    publish([{b"transition": b"not a transition"}, {b"something": b"else", b"entirely": b"!"}])

    learner = Learner(settings)
    learner.start()
    try:
        wait_until(
            lambda: learner.status().transitions_consumed == 62 and learner.status().checkpoints_published >= 2,
            "all entries consumed and two checkpoints published",
        )
        wait_until(lambda: pending_count() == 0, "no entry left pending")
        wait_until(lambda: learner.status().stream_length == 62, "stream statistics refreshed")
    finally:
        learner.stop()

    status = learner.status()
    assert status.transitions_invalid == 2
    assert status.env_steps == 60
    assert status.replay_size == 60
    assert status.updates >= 10
    assert status.stream_pending == 0 and status.stream_lag == 0
    dead = redis_client.xrange(stream_name + ":dead")
    assert len(dead) == 2
    assert all(b"error" in fields and b"source_id" in fields for _, fields in dead)

    versions = published_versions(settings.checkpoint_dir)
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 2
    store = CheckpointStore(settings.checkpoint_dir)
    latest = store.latest()
    assert latest is not None and latest.version == versions[-1] == status.checkpoint_version
    # stop() wrote a final checkpoint holding every update.
    assert latest.metadata["updates"] == status.updates
    assert latest.metadata["algorithm"] == "dqn"
    assert latest.metadata["env_steps"] == 60
    assert latest.metadata["transitions_consumed"] == 62
    assert latest.metadata["hyperparameters"] == asdict(settings.config)
    assert latest.metadata["epsilon"] == pytest.approx(epsilon_at(60, settings.config))
    # What inference does with it: rebuild the network from the metadata and load the weights strictly.
    network = QNetwork(ModelConfig.from_json(latest.metadata["model"]))
    network.load_state_dict(store.load_weights(latest))
    assert network.config.observation_shape == (4, 36, 36)


def test_a_new_learner_resumes_versions_and_counters_and_gets_what_a_crashed_one_left_unacknowledged(
    make_settings, publish, transition, wait_until, pending_count, redis_client, stream_name
) -> None:
    settings = make_settings()
    publish([transition(seq) for seq in range(40)])
    first = Learner(settings)
    first.start()
    try:
        wait_until(
            lambda: first.status().transitions_consumed == 40 and first.status().checkpoints_published >= 2,
            "the first learner to consume and publish",
        )
    finally:
        first.stop()
    store = CheckpointStore(settings.checkpoint_dir)
    before = store.latest()
    assert before is not None

    # A crash: the same consumer read entries and died before acknowledging them.
    publish([transition(seq) for seq in range(40, 60)])
    delivered = redis_client.xreadgroup(settings.consumer_group, settings.consumer_name, {stream_name: ">"}, count=100)
    assert len(delivered[0][1]) == 20
    assert pending_count() == 20

    second = Learner(settings)
    second.start()
    try:
        assert second.status().updates >= before.metadata["updates"]
        wait_until(
            lambda: second.status().transitions_consumed == 20 and second.status().checkpoints_published >= 1,
            "the second learner to consume the re-delivered entries and publish",
        )
        wait_until(lambda: pending_count() == 0, "the re-delivered entries to be acknowledged")
    finally:
        second.stop()

    after = store.latest()
    assert after is not None
    versions = published_versions(settings.checkpoint_dir)
    # The version sequence continues: before.version + 1 is the second learner's first publication.
    assert versions == list(range(1, after.version + 1))
    assert after.version == before.version + second.status().checkpoints_published
    assert after.metadata["updates"] > before.metadata["updates"]
    assert after.metadata["updates"] == second.status().updates
    assert after.metadata["env_steps"] == 60
    assert after.metadata["transitions_consumed"] == 60


def learner_state_file(store: CheckpointStore, version: int) -> str | None:
    metadata = json.loads((store.directory / f"v{version:09d}.json").read_text())
    entry = metadata["files"].get("learner_state")
    return None if entry is None else str(entry["name"])


def test_checkpoints_between_learner_states_name_the_last_one_a_stop_writes_its_own_and_a_resume_follows_it(
    make_settings, publish, transition, wait_until
) -> None:
    settings = make_settings(checkpoint_state_interval_s=3600.0)
    store = CheckpointStore(settings.checkpoint_dir)
    publish([transition(seq) for seq in range(40)])
    first = Learner(settings)
    first.start()
    try:
        wait_until(lambda: first.status().checkpoints_published >= 3, "three publications")
    finally:
        first.stop()
    versions = published_versions(settings.checkpoint_dir)
    first_state = "v000000001.learner.safetensors"
    # The first version writes the state; those until the stop name it; the stop's version writes its own.
    assert [learner_state_file(store, v) for v in versions] == (
        [first_state] * (len(versions) - 1) + [f"v{versions[-1]:09d}.learner.safetensors"]
    )
    assert sorted(p.name for p in settings.checkpoint_dir.glob("*.learner.safetensors")) == [
        first_state,
        f"v{versions[-1]:09d}.learner.safetensors",
    ]

    # As a crash would leave it: the newest version is one that names an earlier state.
    for path in settings.checkpoint_dir.glob(f"v{versions[-1]:09d}.*"):
        path.unlink()
    (settings.checkpoint_dir / "latest.json").write_bytes(
        (settings.checkpoint_dir / f"v{versions[-2]:09d}.json").read_bytes()
    )
    publish([transition(seq) for seq in range(40, 60)])
    second = Learner(settings)
    second.start()
    try:
        assert second.status().updates == json.loads((settings.checkpoint_dir / "latest.json").read_text())["updates"]
        wait_until(lambda: second.status().checkpoints_published >= 2, "two publications after the resume")
    finally:
        second.stop()
    # The resumed learner loaded the state that version named, and names it until its own stop.
    resumed = published_versions(settings.checkpoint_dir)[len(versions) - 1 :]
    assert resumed[0] == versions[-1]
    assert [learner_state_file(store, v) for v in resumed[:-1]] == [first_state] * (len(resumed) - 1)
    assert learner_state_file(store, resumed[-1]) == f"v{resumed[-1]:09d}.learner.safetensors"


def test_entries_pending_for_a_dead_consumer_are_reclaimed(
    make_settings, publish, transition, wait_until, pending_count, redis_client, stream_name
) -> None:
    settings = make_settings(consumer_name="learner-new-host")
    publish([transition(seq) for seq in range(30)])
    redis_client.xgroup_create(stream_name, settings.consumer_group, id="0")
    redis_client.xreadgroup(settings.consumer_group, "learner-old-host", {stream_name: ">"}, count=100)
    assert pending_count() == 30

    stream = TransitionStream(
        settings.redis_url,
        settings.stream,
        settings.consumer_group,
        settings.consumer_name,
        reclaim_min_idle_ms=0,  # the old host is known dead here; in production it must idle a few seconds
    )
    learner = Learner(settings, stream=stream)
    learner.start()
    try:
        wait_until(lambda: learner.status().transitions_consumed == 30, "the reclaimed entries to be consumed")
        wait_until(lambda: pending_count() == 0, "the reclaimed entries to be acknowledged")
    finally:
        learner.stop()
    assert learner.status().env_steps == 30


def test_transitions_that_do_not_fit_the_model_are_dead_lettered_and_counted(
    make_settings, publish, transition, wait_until, pending_count, redis_client, stream_name
) -> None:
    settings = make_settings()
    publish(
        [
            transition(0, shape=(4, 8, 8)),  # too small for any model: the model is not built from it
            *[transition(seq) for seq in range(1, 21)],
            transition(21, shape=(4, 40, 40)),
            transition(22, action_count=5),
            replace(transition(23), reward=float("nan")),
        ]
    )
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().transitions_consumed == 24, "all entries consumed")
        wait_until(lambda: pending_count() == 0, "no entry left pending")
        wait_until(lambda: learner.status().updates > 0, "training on the transitions that fit")
    finally:
        learner.stop()

    status = learner.status()
    assert status.transitions_invalid == 4
    assert status.env_steps == 20
    errors = [fields[b"error"].decode() for _, fields in redis_client.xrange(stream_name + ":dead")]
    assert len(errors) == 4
    assert "no model can be built" in errors[0]
    assert all("does not match the model" in error for error in errors[1:3])
    assert "not a finite number" in errors[3]


def test_a_failed_publication_is_counted_and_retried_while_training_goes_on(
    make_settings, publish, transition, wait_until
) -> None:
    settings = make_settings()
    settings.checkpoint_dir.mkdir(parents=True)
    # A directory where the weights file must go makes every publication of version 1 fail.
    blocker = settings.checkpoint_dir / "v000000001.safetensors"
    blocker.mkdir()
    publish([transition(seq) for seq in range(30)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().checkpoint_publish_failures >= 2, "two failed publications")
        status = learner.status()
        assert status.checkpoint_version == 0 and status.checkpoints_published == 0
        updates = status.updates
        wait_until(lambda: learner.status().updates > updates, "training to go on")
        blocker.rmdir()
        wait_until(lambda: learner.status().checkpoints_published >= 1, "the retry to succeed")
    finally:
        learner.stop()
    latest = CheckpointStore(settings.checkpoint_dir).latest()
    assert latest is not None and latest.version >= 1
    assert published_versions(settings.checkpoint_dir)[0] == 1


def test_learner_outlives_redis_going_away_and_carries_on_when_it_returns(
    make_settings, transition, wait_until
) -> None:
    import redis

    from rtrl.transitions import encode

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(redis_url=url)
    readiness: list[bool] = []
    learner = Learner(settings)
    learner.watch_ready(readiness.append)
    learner.start()
    try:
        # No Redis yet: counted, retried, not ready.
        wait_until(lambda: learner.status().redis_errors >= 2, "failed connection attempts")
        assert not learner.status().connected and readiness == [False]

        with LocalRedis(port=port) as server:
            client = redis.Redis.from_url(server.url)
            for seq in range(30):
                client.xadd(settings.stream, {b"transition": encode(transition(seq))})
            wait_until(lambda: learner.status().transitions_consumed == 30, "consumption once Redis is up")
            wait_until(lambda: learner.status().updates > 0, "training")
            assert readiness[-1] is True
            client.close()

        # Redis is gone again: training continues on the replay buffer.
        errors = learner.status().redis_errors
        wait_until(lambda: learner.status().redis_errors > errors, "the loss of Redis to be noticed")
        assert readiness[-1] is False
        updates = learner.status().updates
        wait_until(lambda: learner.status().updates > updates + 5, "training without Redis")

        # A fresh, empty Redis on the same address: the group is re-created and consumption resumes.
        with LocalRedis(port=port) as server:
            client = redis.Redis.from_url(server.url)
            for seq in range(30, 40):
                client.xadd(settings.stream, {b"transition": encode(transition(seq))})
            wait_until(lambda: learner.status().transitions_consumed == 40, "consumption after Redis returned")
            assert readiness[-1] is True
            client.close()
    finally:
        learner.stop()
    assert learner.failure is None


def test_an_unusable_checkpoint_stops_the_start_with_a_learner_error(make_settings) -> None:
    settings = make_settings()
    settings.checkpoint_dir.mkdir(parents=True)
    (settings.checkpoint_dir / "latest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LearnerError, match="RTRL_CHECKPOINT_DIR"):
        Learner(settings).start()


def test_a_checkpoint_of_another_algorithm_is_not_resumed(make_settings) -> None:
    settings = make_settings()
    import torch

    CheckpointStore(settings.checkpoint_dir).publish(
        1,
        {"w": torch.zeros(1)},
        {"algorithm": "vtrace", "model": {"arch": "mlp", "observation_shape": [3], "action_count": 2}},
    )
    with pytest.raises(LearnerError, match="trained with 'vtrace', not 'dqn'"):
        Learner(settings).start()


def test_the_learner_builds_the_network_the_run_names_and_every_checkpoint_says_so(
    make_settings, publish, transition, wait_until
) -> None:
    settings = make_settings(model_arch="impala_cnn", model_width=2)
    publish([transition(seq) for seq in range(40)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().checkpoints_published >= 1, "a checkpoint")
    finally:
        learner.stop()
    latest = CheckpointStore(settings.checkpoint_dir).latest()
    assert latest is not None
    assert (latest.metadata["model"]["arch"], latest.metadata["model"]["width"]) == ("impala_cnn", 2)
    assert latest.metadata["model"]["observation_shape"] == [4, 36, 36]


def test_a_checkpoint_of_another_network_than_the_run_names_is_not_resumed(
    make_settings, publish, transition, wait_until
) -> None:
    first = make_settings()
    publish([transition(seq) for seq in range(40)])
    learner = Learner(first)
    learner.start()
    try:
        wait_until(lambda: learner.status().checkpoints_published >= 1, "a checkpoint")
    finally:
        learner.stop()

    with pytest.raises(LearnerError) as caught:
        Learner(make_settings(model_arch="impala_cnn", model_width=7)).start()
    message = str(caught.value)
    assert (
        "is a nature_cnn network of width 1, but this run names RTRL_MODEL_ARCH=impala_cnn RTRL_MODEL_WIDTH=7"
        in message
    )
    assert "RTRL_CHECKPOINT_DIR" in message
    # Naming no network continues whatever the checkpoint holds.
    resumed = Learner(make_settings())
    resumed.start()
    resumed.stop()


def test_a_slow_learner_still_publishes_every_checkpoint_every_s(
    make_settings, publish, transition, wait_until
) -> None:
    # A hundred thousand updates between checkpoints would leave acting on the first policy for the whole test.
    settings = make_settings(checkpoint_every_updates=100_000, checkpoint_every_s=0.2)
    publish([transition(seq) for seq in range(40)])
    learner = Learner(settings)
    learner.start()
    try:
        wait_until(lambda: learner.status().checkpoints_published >= 3, "three checkpoints by time")
        status = learner.status()
    finally:
        learner.stop()
    assert status.updates < 100_000
    assert published_versions(settings.checkpoint_dir)[:3] == [1, 2, 3]
