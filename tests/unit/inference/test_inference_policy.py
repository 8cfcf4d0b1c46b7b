"""Tests of the inference Policy: fresh policy, epsilon-greedy answers, validation, deadlines, hot reload."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from rtrl.grpc_util import DeadlineTooShort, InvalidArgument, Unavailable
from rtrl.models import ModelConfig, QNetwork, default_model_config
from rtrl.services.inference.policy import DEFAULT_CHECKPOINT_EPSILON, FRESH_VERSION, ActResult, Policy

MakePolicy = Callable[..., Policy]
OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)
ACTIONS = 4
# Generous bound for background work that should take a fraction of a second; the tests never
# assert on how long it took, only that it happened.
WAIT_BOUND_S = 10.0


def wait_for_version(policy: Policy, version: int) -> ActResult:
    give_up_at = time.monotonic() + WAIT_BOUND_S
    while True:
        result = policy.act(OBS, ACTIONS, None)
        if result.checkpoint_version == version or time.monotonic() > give_up_at:
            return result
        time.sleep(0.01)


# -- the fresh policy --------------------------------------------------------------------------------


def test_fresh_policy_is_built_from_first_request_and_identical_on_every_replica(make_policy: MakePolicy) -> None:
    first = make_policy(seed=7, epsilon_start=0.0, replica_id="replica-a")
    second = make_policy(seed=7, epsilon_start=0.0, replica_id="replica-b")
    other_seed = make_policy(seed=8, epsilon_start=0.0, replica_id="replica-a")
    assert first.served is None

    answers = [policy.act(OBS, ACTIONS, None) for policy in (first, second, other_seed)]

    assert first.served is not None
    assert first.served.config == default_model_config(OBS.shape, ACTIONS)
    assert all(answer.checkpoint_version == FRESH_VERSION for answer in answers)
    assert answers[0].action_values == answers[1].action_values
    assert answers[0].action == answers[1].action
    assert answers[0].action_values != answers[2].action_values


def test_fresh_policy_explores_at_epsilon_start(make_policy: MakePolicy) -> None:
    policy = make_policy(epsilon_start=1.0)

    answers = [policy.act(OBS, ACTIONS, None) for _ in range(40)]

    assert all(answer.explored and answer.epsilon == 1.0 for answer in answers)
    assert all(answer.behaviour_log_prob == pytest.approx(math.log(1 / ACTIONS)) for answer in answers)
    # 40 uniform draws over 4 actions all landing on one action has probability 4 * 4**-40.
    assert len({answer.action for answer in answers}) > 1


def test_observation_that_no_network_fits_is_invalid_and_builds_nothing(make_policy: MakePolicy) -> None:
    policy = make_policy()
    tiny_images = np.zeros((4, 10, 10), dtype=np.uint8)

    with pytest.raises(InvalidArgument, match=r"\[4, 10, 10\].*GetSpec"):
        policy.act(tiny_images, ACTIONS, None)

    assert policy.served is None
    assert policy.status().requests_invalid == 1


def record_input_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Every network the policy builds from now on records the dtype of each input it is given."""
    import rtrl.services.inference.policy as policy_module

    seen: list[torch.dtype] = []
    build = policy_module.build_model

    def build_and_record(config: ModelConfig) -> torch.nn.Module:
        model = build(config)
        model.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0].dtype))
        return model

    monkeypatch.setattr(policy_module, "build_model", build_and_record)
    return seen


def test_a_new_network_has_run_on_every_observation_dtype_before_its_first_answer(
    make_policy: MakePolicy, publish: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On cuda a first uint8 pass runs kernels a float pass does not; measured as a call's, a slow first
    pass makes the replica refuse calls until its next probe. Both run first, for every new network."""
    seen = record_input_dtypes(monkeypatch)
    fresh = make_policy()
    fresh.act(OBS, ACTIONS, None)
    assert seen[:2] == [torch.uint8, torch.float32] and len(seen) == 3

    seen.clear()
    publish(1)
    assert make_policy().load_initial()
    assert seen == [torch.uint8, torch.float32]


# -- epsilon-greedy answers ----------------------------------------------------------------------------


def test_greedy_answer_at_epsilon_zero_has_log_prob_zero(make_policy: MakePolicy, publish: Callable) -> None:
    publish(1, epsilon=0.0)
    policy = make_policy()
    assert policy.load_initial()

    answers = [policy.act(OBS, ACTIONS, None) for _ in range(10)]

    for answer in answers:
        assert answer.action == int(np.argmax(answer.action_values))
        assert not answer.explored
        assert answer.behaviour_log_prob == 0.0
        assert answer.epsilon == 0.0


def test_log_prob_is_the_epsilon_greedy_probability_of_the_chosen_action(
    make_policy: MakePolicy, publish: Callable
) -> None:
    epsilon = 0.5
    publish(1, epsilon=epsilon)
    policy = make_policy()
    policy.load_initial()

    answers = [policy.act(OBS, ACTIONS, None) for _ in range(60)]

    greedy_log_prob = math.log(1 - epsilon + epsilon / ACTIONS)
    other_log_prob = math.log(epsilon / ACTIONS)
    for answer in answers:
        greedy = int(np.argmax(answer.action_values))
        expected = greedy_log_prob if answer.action == greedy else other_log_prob
        assert answer.behaviour_log_prob == pytest.approx(expected)
        if not answer.explored:
            assert answer.action == greedy
    # Both branches were exercised (each has probability 1/2 per call; missing one has 2**-59).
    assert {answer.explored for answer in answers} == {True, False}


def test_checkpoint_without_epsilon_explores_at_the_default_rate(make_policy: MakePolicy, publish: Callable) -> None:
    publish(1, epsilon=None)
    policy = make_policy()
    policy.load_initial()

    assert policy.act(OBS, ACTIONS, None).epsilon == DEFAULT_CHECKPOINT_EPSILON


@pytest.mark.parametrize("broken", [float("nan"), float("-inf")])
def test_non_finite_action_values_are_refused_for_the_call_not_acted_on(
    make_policy: MakePolicy, publish: Callable, broken: float
) -> None:
    publish(1, action_value=broken)
    policy = make_policy()
    policy.load_initial()

    with pytest.raises(Unavailable, match="non-finite action values from checkpoint 1; retry on another replica"):
        policy.act(OBS, ACTIONS, None)
    assert policy.status().requests_answered == 0


# -- validation -----------------------------------------------------------------------------------------


def test_wrong_observation_shape_is_invalid_and_names_the_expected_shape(
    make_policy: MakePolicy, publish: Callable
) -> None:
    publish(1)
    policy = make_policy()
    policy.load_initial()

    with pytest.raises(InvalidArgument, match=r"shape \[5\] does not match the shape \[3\].*send observations"):
        policy.act(np.zeros(5, dtype=np.float32), ACTIONS, None)

    assert policy.status().requests_invalid == 1
    assert policy.status().requests_answered == 0


def test_wrong_action_count_is_invalid_and_names_the_model_count(make_policy: MakePolicy, publish: Callable) -> None:
    publish(1)
    policy = make_policy()
    policy.load_initial()

    with pytest.raises(InvalidArgument, match=r"action_count is 6 but .* has 4 actions; send action_count=4"):
        policy.act(OBS, 6, None)


def test_action_count_zero_is_invalid_even_before_any_model(make_policy: MakePolicy) -> None:
    policy = make_policy()

    with pytest.raises(InvalidArgument, match=r"action_count is 0; send the number of actions"):
        policy.act(OBS, 0, None)

    assert policy.served is None


def test_unsupported_dtype_is_invalid(make_policy: MakePolicy) -> None:
    policy = make_policy()

    with pytest.raises(InvalidArgument, match="send uint8 or float32"):
        policy.act(OBS.astype(np.float64), ACTIONS, None)


# -- deadlines -------------------------------------------------------------------------------------------


def count_forward_passes(policy: Policy) -> list[int]:
    """Counts forward passes of the served network with a real torch hook."""
    assert policy.served is not None
    calls = [0]

    def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
        calls[0] += 1

    policy.served.model.register_forward_hook(hook)
    return calls


def test_call_with_deadline_shorter_than_a_forward_pass_is_refused_without_computing(
    make_policy: MakePolicy, publish: Callable
) -> None:
    publish(1)
    policy = make_policy()
    policy.load_initial()
    policy.act(OBS, ACTIONS, None)  # measures a forward pass
    forward_passes = count_forward_passes(policy)
    measured_forward_s = policy.inference_ms.values().min() / 1000.0
    answered = policy.status().requests_answered

    with pytest.raises(DeadlineTooShort, match="longer deadline"):
        policy.act(OBS, ACTIONS, measured_forward_s / 2)
    with pytest.raises(DeadlineTooShort):
        policy.act(OBS, ACTIONS, 0.0)

    status = policy.status()
    assert forward_passes[0] == 0
    assert status.requests_answered == answered
    assert status.requests_refused_deadline == 2
    assert len(policy.inference_ms) == answered
    assert status.in_flight == 0


def test_call_whose_wait_for_the_model_would_pass_its_deadline_is_refused(
    make_policy: MakePolicy, publish: Callable
) -> None:
    publish(1)
    policy = make_policy()
    policy.load_initial()
    policy.act(OBS, ACTIONS, None)
    assert policy.served is not None
    # A forward pass that blocks until released keeps the model busy as long as the test wants.
    entered, release = threading.Event(), threading.Event()

    def hold_the_model(module: torch.nn.Module, inputs: object) -> None:
        entered.set()
        release.wait(WAIT_BOUND_S)

    handle = policy.served.model.register_forward_pre_hook(hold_the_model)
    slow_answers: list[ActResult] = []
    slow_call = threading.Thread(target=lambda: slow_answers.append(policy.act(OBS, ACTIONS, None)))
    slow_call.start()
    assert entered.wait(WAIT_BOUND_S)
    handle.remove()
    try:
        with pytest.raises(DeadlineTooShort, match="calls ahead"):
            policy.act(OBS, ACTIONS, 0.05)
    finally:
        release.set()
        slow_call.join(WAIT_BOUND_S)

    assert len(slow_answers) == 1
    assert policy.status().requests_refused_deadline == 1
    assert policy.act(OBS, ACTIONS, None).checkpoint_version == 1


# -- checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_present_at_start_is_served_before_any_request(make_policy: MakePolicy, publish: Callable) -> None:
    publish(3, action_value=3.0)
    policy = make_policy()

    assert policy.load_initial()

    assert policy.served is not None and policy.served.checkpoint_version == 3
    answer = policy.act(OBS, ACTIONS, None)
    assert answer.checkpoint_version == 3
    assert answer.action_values == (3.0,) * ACTIONS


def test_new_checkpoint_is_served_after_a_poll(make_policy: MakePolicy, publish: Callable) -> None:
    policy = make_policy(epsilon_start=0.0)
    assert policy.act(OBS, ACTIONS, None).checkpoint_version == FRESH_VERSION

    publish(1, action_value=1.0)
    assert policy.poll_once()
    first = policy.act(OBS, ACTIONS, None)
    publish(2, action_value=2.0, epsilon=0.25)
    assert policy.poll_once()
    second = policy.act(OBS, ACTIONS, None)

    assert (first.checkpoint_version, first.action_values) == (1, (1.0,) * ACTIONS)
    assert (second.checkpoint_version, second.action_values, second.epsilon) == (2, (2.0,) * ACTIONS, 0.25)
    assert policy.status().checkpoints_loaded == 2


def test_checkpoint_weights_are_served_exactly(make_policy: MakePolicy, publish: Callable) -> None:
    config = ModelConfig(arch="mlp", observation_shape=(3,), action_count=ACTIONS, hidden_size=16)
    model = QNetwork(config)
    publish(1, config, weights=model.state_dict())
    policy = make_policy()
    policy.load_initial()

    answer = policy.act(OBS, ACTIONS, None)

    with torch.no_grad():
        expected = model(torch.from_numpy(OBS[None].copy()))[0]
    assert answer.action_values == pytest.approx(expected.tolist())


def test_watcher_serves_a_published_checkpoint_without_being_asked(make_policy: MakePolicy, publish: Callable) -> None:
    publish(1, action_value=1.0)
    policy = make_policy(poll_interval_s=0.1)
    policy.load_initial()
    policy.start_watching()

    publish(2, action_value=2.0)
    answer = wait_for_version(policy, 2)

    assert answer.checkpoint_version == 2
    assert answer.action_values == (2.0,) * ACTIONS


def corrupt_weights_file(checkpoint_dir: Path, publish: Callable, config: ModelConfig) -> None:
    checkpoint = publish(2, action_value=2.0)
    (checkpoint_dir / checkpoint.metadata["files"]["weights"]["name"]).write_bytes(b"not safetensors at all")


def publish_weights_of_another_shape(checkpoint_dir: Path, publish: Callable, config: ModelConfig) -> None:
    other = ModelConfig(arch="mlp", observation_shape=(3,), action_count=ACTIONS + 2, hidden_size=16)
    publish(2, config, weights=QNetwork(other).state_dict())


def publish_without_model_config(checkpoint_dir: Path, publish: Callable, config: ModelConfig) -> None:
    publish(2, metadata={"epsilon": 0.1})


def publish_unknown_architecture(checkpoint_dir: Path, publish: Callable, config: ModelConfig) -> None:
    publish(2, metadata={"model": {**config.to_json(), "arch": "transformer"}})


@pytest.mark.parametrize(
    "break_checkpoint",
    [
        corrupt_weights_file,
        publish_weights_of_another_shape,
        publish_without_model_config,
        publish_unknown_architecture,
    ],
)
def test_unusable_checkpoint_is_counted_and_the_previous_version_keeps_serving(
    make_policy: MakePolicy,
    publish: Callable,
    checkpoint_dir: Path,
    small_config: ModelConfig,
    break_checkpoint: Callable[[Path, Callable, ModelConfig], None],
) -> None:
    publish(1, action_value=1.0)
    policy = make_policy()
    policy.load_initial()

    break_checkpoint(checkpoint_dir, publish, small_config)
    assert not policy.poll_once()

    status = policy.status()
    assert (status.checkpoint_load_failures, status.checkpoints_loaded) == (1, 1)
    assert policy.act(OBS, ACTIONS, None).action_values == (1.0,) * ACTIONS
    publish(3, action_value=3.0)
    assert policy.poll_once()
    assert policy.act(OBS, ACTIONS, None).checkpoint_version == 3


def test_watcher_thread_survives_an_unusable_checkpoint(
    make_policy: MakePolicy, publish: Callable, small_config: ModelConfig, checkpoint_dir: Path
) -> None:
    publish(1, action_value=1.0)
    policy = make_policy()
    policy.load_initial()
    policy.start_watching()

    publish_weights_of_another_shape(checkpoint_dir, publish, small_config)
    publish(3, action_value=3.0)

    assert wait_for_version(policy, 3).action_values == (3.0,) * ACTIONS


def test_calls_in_flight_during_reloads_all_get_answers_from_published_versions(
    make_policy: MakePolicy, publish: Callable
) -> None:
    last_version = 6
    publish(1, action_value=1.0)
    policy = make_policy(poll_interval_s=0.005)
    policy.load_initial()
    policy.start_watching()
    stop = threading.Event()
    answers: dict[int, list[ActResult]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def hammer(worker: int) -> None:
        try:
            while not stop.is_set():
                answers[worker].append(policy.act(OBS, ACTIONS, 1.0))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(worker,)) for worker in answers]
    for thread in threads:
        thread.start()
    try:
        for version in range(2, last_version + 1):
            publish(version, action_value=float(version))
            time.sleep(0.02)  # pacing so that reloads interleave with calls; nothing is asserted on it
        final = wait_for_version(policy, last_version)
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_BOUND_S)

    assert errors == []
    assert final.checkpoint_version == last_version
    for worker_answers in answers.values():
        assert worker_answers
        versions = [answer.checkpoint_version for answer in worker_answers]
        assert set(versions) <= set(range(1, last_version + 1))
        assert versions == sorted(versions), "a later call was answered by an older version"
        # Model and version are swapped together: each answer's values come from the version it names.
        for answer in worker_answers:
            assert answer.action_values == (float(answer.checkpoint_version),) * ACTIONS


# -- batching and slow forward passes ---------------------------------------------------------------------------


def test_concurrent_calls_share_forward_passes_and_each_gets_its_own_answer(
    make_policy: MakePolicy, publish: Callable, small_config: ModelConfig
) -> None:
    epsilon, callers = 0.5, 6
    publish(1, epsilon=epsilon)
    # While one forward pass holds the replica for 20 ms, the other calls queue for the next one.
    policy = make_policy(max_batch_size=8, forward_ms=20.0)
    policy.load_initial()
    assert policy.served is not None
    forward_passes = count_forward_passes(policy)
    observations = [np.full(3, caller, dtype=np.float32) for caller in range(callers)]
    start = threading.Barrier(callers)
    answers: dict[int, ActResult] = {}

    def call(caller: int) -> None:
        start.wait(WAIT_BOUND_S)
        answers[caller] = policy.act(observations[caller], ACTIONS, None)

    threads = [threading.Thread(target=call, args=(caller,)) for caller in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_BOUND_S)

    batches = forward_passes[0]
    assert len(answers) == callers
    assert batches < callers
    assert sum(policy.batcher.batch_sizes.values()) == callers
    assert max(answer.batch_size for answer in answers.values()) > 1
    greedy_log_prob, other_log_prob = math.log(1 - epsilon + epsilon / ACTIONS), math.log(epsilon / ACTIONS)
    with torch.no_grad():
        expected_values = policy.served.model(torch.from_numpy(np.stack(observations)))
    for caller, answer in answers.items():
        # Each row is that caller's observation's values, not a neighbour's in the batch.
        assert answer.action_values == pytest.approx(expected_values[caller].tolist(), abs=1e-6)
        greedy = int(np.argmax(answer.action_values))
        assert answer.behaviour_log_prob == pytest.approx(
            greedy_log_prob if answer.action == greedy else other_log_prob
        )
        assert answer.checkpoint_version == 1
    assert policy.status().requests_answered == callers
    assert policy.status().batches_run == batches


def test_a_slow_forward_pass_counts_in_the_deadline_estimate(make_policy: MakePolicy, publish: Callable) -> None:
    forward_ms = 50.0
    publish(1)
    policy = make_policy(forward_ms=forward_ms)
    policy.load_initial()

    answer = policy.act(OBS, ACTIONS, None)
    forward_passes = count_forward_passes(policy)
    with pytest.raises(DeadlineTooShort, match="longer deadline"):
        policy.act(OBS, ACTIONS, forward_ms / 2 / 1000.0)

    assert answer.inference_ms >= forward_ms
    assert policy.expected_forward_s >= forward_ms / 1000.0
    assert policy.status().expected_forward_ms >= forward_ms
    assert forward_passes[0] == 0
    assert policy.status().requests_refused_deadline == 1


def test_a_call_that_would_wait_past_its_deadline_for_a_batch_is_refused_and_not_computed(
    make_policy: MakePolicy, publish: Callable
) -> None:
    # The replica is busy for 200 ms per forward pass; a call arriving while one runs, with less
    # than that left, could only be answered late.
    publish(1)
    policy = make_policy(forward_ms=200.0)
    policy.load_initial()
    policy.act(OBS, ACTIONS, None)
    assert policy.served is not None
    entered = threading.Event()
    policy.served.model.register_forward_pre_hook(lambda module, inputs: entered.set())
    forward_passes = count_forward_passes(policy)
    busy = threading.Thread(target=policy.act, args=(OBS, ACTIONS, None))
    busy.start()
    assert entered.wait(WAIT_BOUND_S)

    with pytest.raises(DeadlineTooShort, match="calls ahead"):
        policy.act(OBS, ACTIONS, 0.250)
    busy.join(WAIT_BOUND_S)

    assert forward_passes[0] == 1
    assert policy.status().requests_refused_deadline == 1
    assert policy.status().requests_answered_late == 0


def test_fresh_policy_uses_the_configured_architecture_and_width(make_policy: MakePolicy) -> None:
    policy = make_policy(model_arch="impala_cnn", model_width=2, epsilon_start=0.0)
    frames = np.zeros((2, 16, 16), dtype=np.uint8)

    answer = policy.act(frames, ACTIONS, None)

    assert policy.served is not None
    assert policy.served.config == default_model_config((2, 16, 16), ACTIONS, "impala_cnn", 2)
    assert (policy.status().model_arch, policy.status().model_width) == ("impala_cnn", 2)
    assert len(answer.action_values) == ACTIONS


def test_configured_architecture_that_cannot_take_the_observation_says_so(make_policy: MakePolicy) -> None:
    policy = make_policy(model_arch="impala_cnn")

    with pytest.raises(InvalidArgument, match=r"RTRL_MODEL_ARCH=impala_cnn.*needs observations shaped"):
        policy.act(OBS, ACTIONS, None)


def test_a_checkpoint_of_another_network_than_configured_is_served_and_said_once(
    make_policy: MakePolicy, publish: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    policy = make_policy(model_arch="impala_cnn", model_width=7, epsilon_start=0.0)
    learners = default_model_config(OBS.shape, ACTIONS, "mlp")
    for version in (1, 2):
        publish(version, learners, metadata={"model": learners.to_json(), "epsilon": 0.0, "algorithm": "dqn"})

    with caplog.at_level("WARNING", logger="rtrl.services.inference.policy"):
        assert policy.poll_once()  # loads version 2, the newest
        publish(3, learners, metadata={"model": learners.to_json(), "epsilon": 0.0, "algorithm": "dqn"})
        assert policy.poll_once()
        answer = policy.act(OBS, ACTIONS, None)

    assert answer.checkpoint_version == 3
    assert policy.status().model_arch == "mlp"
    [line] = [record.getMessage() for record in caplog.records]
    assert "checkpoint 2 is a mlp network of width 1 trained by dqn" in line
    assert "RTRL_MODEL_ARCH=impala_cnn RTRL_MODEL_WIDTH=7" in line and "serving the checkpoint's network" in line


def test_a_checkpoint_of_the_configured_network_says_nothing(
    make_policy: MakePolicy, publish: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    policy = make_policy(model_arch="mlp", epsilon_start=0.0)
    config = default_model_config(OBS.shape, ACTIONS, "mlp")
    publish(1, config, metadata={"model": config.to_json(), "epsilon": 0.0, "algorithm": "dqn"})
    with caplog.at_level("WARNING", logger="rtrl.services.inference.policy"):
        assert policy.poll_once()
    assert not caplog.records


def test_closed_policy_refuses_calls_as_unavailable(make_policy: MakePolicy, publish: Callable) -> None:
    publish(1)
    policy = make_policy()
    policy.load_initial()
    policy.close()

    with pytest.raises(Unavailable, match="shutting down"):
        policy.act(OBS, ACTIONS, None)
