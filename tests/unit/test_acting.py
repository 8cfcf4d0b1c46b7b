"""Acting on a network's outputs: epsilon-greedy on Q-values and softmax sampling, each with the exact
log-probability of the action it returns."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from rtrl.acting import Uniform, epsilon_greedy, sample_softmax


def test_epsilon_zero_is_greedy_with_probability_one() -> None:
    rng = np.random.default_rng(0)
    assert {epsilon_greedy([0.1, 2.0, -1.0], 0.0, rng) for _ in range(50)} == {(1, False, 0.0)}


def test_the_greedy_action_is_the_first_of_equal_best_values() -> None:
    assert epsilon_greedy([0.5, 2.0, -1.0, 2.0], 0.0, random.Random(0))[0] == 1


@pytest.mark.parametrize("rng", [np.random.default_rng(1), random.Random(1)], ids=["numpy", "python"])
def test_epsilon_greedy_explores_uniformly_and_counts_a_random_draw_of_the_greedy_action(rng: Uniform) -> None:
    draws = [epsilon_greedy([0.0, 1.0, 0.5, 0.2], 0.4, rng) for _ in range(20_000)]
    counts = Counter(action for action, _, _ in draws)
    # The greedy action 1: 0.6 + 0.4 / 4; each other: 0.4 / 4.
    assert counts[1] / len(draws) == pytest.approx(0.7, abs=0.015)
    for action in (0, 2, 3):
        assert counts[action] / len(draws) == pytest.approx(0.1, abs=0.01)
    log_probs = {action: log_prob for action, _, log_prob in draws}
    assert log_probs[1] == pytest.approx(math.log(0.7))
    assert log_probs[0] == pytest.approx(math.log(0.1))
    assert any(explored and action == 1 for action, explored, _ in draws)


def test_softmax_sampling_draws_each_action_as_often_as_its_probability() -> None:
    rng = np.random.default_rng(2)
    logits = np.array([0.0, math.log(3.0), -50.0], dtype=np.float32)  # 0.25, 0.75, ~0
    draws = [sample_softmax(logits, rng) for _ in range(20_000)]
    counts = Counter(action for action, _ in draws)
    assert counts[1] / len(draws) == pytest.approx(0.75, abs=0.015)
    assert counts[2] == 0
    assert dict(draws) == {0: pytest.approx(math.log(0.25)), 1: pytest.approx(math.log(0.75))}
