"""Serving actor-critic checkpoints (V-trace): softmax sampling, log pi as behaviour log-prob, batching."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from rtrl.grpc_util import Unavailable
from rtrl.models import ActorCritic, ModelConfig
from rtrl.services.inference.policy import FRESH_VERSION, ActResult, Policy

MakePolicy = Callable[..., Policy]
OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)
ACTIONS = 4
AC_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=ACTIONS, hidden_size=16, head="actor_critic")
WAIT_BOUND_S = 10.0


def actor_critic_with_logits(logits: list[float]) -> ActorCritic:
    """An actor-critic whose policy logits are `logits` for every observation."""
    model = ActorCritic(AC_CONFIG)
    with torch.no_grad():
        model.policy_logits.weight.zero_()
        model.policy_logits.bias.copy_(torch.tensor(logits))
    return model


def test_a_published_actor_critic_checkpoint_is_served_and_samples_without_epsilon(
    make_policy: MakePolicy, publish: Callable
) -> None:
    model = ActorCritic(AC_CONFIG)
    # An epsilon in the metadata means nothing to an actor-critic: it explores by sampling.
    publish(1, AC_CONFIG, weights=model.state_dict(), metadata={"model": AC_CONFIG.to_json(), "epsilon": 0.3})
    policy = make_policy()
    assert policy.load_initial()

    answers = [policy.act(OBS, ACTIONS, None) for _ in range(20)]

    assert policy.served is not None and isinstance(policy.served.model, ActorCritic)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(OBS[None].copy()))
        log_pi = torch.log_softmax(logits[0].double(), dim=-1)
    for answer in answers:
        assert answer.checkpoint_version == 1
        assert (answer.epsilon, answer.explored) == (0.0, False)
        assert answer.action_values == pytest.approx(logits[0].tolist())
        # The behaviour log-probability V-trace corrects with is log softmax(logits) at the sampled action.
        assert answer.behaviour_log_prob == pytest.approx(log_pi[answer.action].item(), abs=1e-6)
    status = policy.status()
    assert (status.model_head, status.epsilon) == ("actor_critic", 0.0)


def test_actions_are_drawn_from_the_softmax_not_taken_greedily(make_policy: MakePolicy, publish: Callable) -> None:
    probabilities = np.array([0.7, 0.2, 0.1, 0.0])
    # log(0) would be -inf; -60 gives the last action a probability of about 1e-26.
    logits = [float(np.log(p)) if p > 0 else -60.0 for p in probabilities]
    publish(1, AC_CONFIG, weights=actor_critic_with_logits(logits).state_dict())
    policy = make_policy()
    policy.load_initial()
    draws = 4000

    actions = np.array([policy.act(OBS, ACTIONS, None).action for _ in range(draws)])

    frequencies = np.bincount(actions, minlength=ACTIONS) / draws
    # Each frequency's standard deviation is at most sqrt(0.25 / 4000) ~ 0.008; 0.04 is five of them.
    assert frequencies == pytest.approx(probabilities, abs=0.04)
    assert frequencies[3] == 0.0
    assert frequencies[1] > 0.1, "a greedy policy would never pick a non-maximal action"


def test_a_q_checkpoint_is_still_served_epsilon_greedily_when_the_replica_is_set_to_vtrace(
    make_policy: MakePolicy, publish: Callable
) -> None:
    publish(1, action_value=2.0, epsilon=0.0)
    policy = make_policy(algorithm="vtrace")
    policy.load_initial()

    answer = policy.act(OBS, ACTIONS, None)

    assert answer.action_values == (2.0,) * ACTIONS
    assert (answer.behaviour_log_prob, answer.explored) == (0.0, False)
    assert policy.status().model_head == "q"


def test_the_served_head_follows_what_the_learner_publishes(make_policy: MakePolicy, publish: Callable) -> None:
    policy = make_policy(algorithm="dqn", epsilon_start=0.0)
    publish(1, action_value=1.0)
    assert policy.poll_once()
    assert policy.status().model_head == "q"

    publish(2, AC_CONFIG, action_value=0.0)
    assert policy.poll_once()

    answer = policy.act(OBS, ACTIONS, None)
    assert answer.checkpoint_version == 2
    assert answer.action_values == (0.0,) * ACTIONS
    assert answer.behaviour_log_prob == pytest.approx(np.log(1 / ACTIONS))
    assert policy.status().model_head == "actor_critic"


def test_the_fresh_policy_of_a_vtrace_replica_is_an_actor_critic_identical_on_every_replica(
    make_policy: MakePolicy,
) -> None:
    first = make_policy(algorithm="vtrace", seed=3, replica_id="replica-a", epsilon_start=1.0)
    second = make_policy(algorithm="vtrace", seed=3, replica_id="replica-b", epsilon_start=1.0)
    assert first.status().epsilon == 0.0  # epsilon_start only applies to a Q-network

    answers = [policy.act(OBS, ACTIONS, None) for policy in (first, second)]

    assert first.served is not None and first.served.config.head == "actor_critic"
    assert isinstance(first.served.model, ActorCritic)
    assert all(answer.checkpoint_version == FRESH_VERSION for answer in answers)
    assert answers[0].action_values == answers[1].action_values
    assert all((answer.epsilon, answer.explored) == (0.0, False) for answer in answers)


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="algorithm 'a2c' is unknown; use one of dqn, vtrace, ppo"):
        Policy("unused", algorithm="a2c")


@pytest.mark.parametrize("broken", [float("nan"), float("inf")])
def test_non_finite_logits_are_refused_for_the_call_not_sampled(
    make_policy: MakePolicy, publish: Callable, broken: float
) -> None:
    publish(1, AC_CONFIG, weights=actor_critic_with_logits([0.0, broken, 0.0, 0.0]).state_dict())
    policy = make_policy()
    policy.load_initial()

    with pytest.raises(Unavailable, match="non-finite policy logits from checkpoint 1"):
        policy.act(OBS, ACTIONS, None)


def test_calls_queued_behind_a_forward_pass_share_the_next_one_and_each_gets_its_own_row(
    make_policy: MakePolicy, publish: Callable
) -> None:
    queued_callers = 5
    model = ActorCritic(AC_CONFIG)
    publish(1, AC_CONFIG, weights=model.state_dict())
    policy = make_policy(max_batch_size=8)
    policy.load_initial()
    assert policy.served is not None
    # The first call's forward pass blocks until the others are queued, so they must share the next one.
    entered, release = threading.Event(), threading.Event()

    def hold_the_first_pass(module: torch.nn.Module, inputs: object) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(WAIT_BOUND_S)

    policy.served.model.register_forward_pre_hook(hold_the_first_pass)
    observations = [np.full(3, caller, dtype=np.float32) for caller in range(queued_callers + 1)]
    answers: dict[int, ActResult] = {}

    def call(caller: int) -> None:
        answers[caller] = policy.act(observations[caller], ACTIONS, None)

    threads = [threading.Thread(target=call, args=(caller,)) for caller in range(queued_callers + 1)]
    threads[0].start()
    assert entered.wait(WAIT_BOUND_S)
    for thread in threads[1:]:
        thread.start()
    give_up_at = time.monotonic() + WAIT_BOUND_S
    while policy.batcher.counts().queued < queued_callers and time.monotonic() < give_up_at:
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join(WAIT_BOUND_S)

    assert sorted(answers) == list(range(queued_callers + 1))
    assert answers[0].batch_size == 1
    assert {answers[caller].batch_size for caller in range(1, queued_callers + 1)} == {queued_callers}
    assert policy.status().batches_run == 2
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(np.stack(observations)))
    for caller, answer in answers.items():
        # Each caller gets its own row of the batch, and the log-probability of its own sampled action.
        assert answer.action_values == pytest.approx(logits[caller].tolist(), abs=1e-6)
        log_pi = torch.log_softmax(logits[caller].double(), dim=-1)
        assert answer.behaviour_log_prob == pytest.approx(log_pi[answer.action].item(), abs=1e-6)
