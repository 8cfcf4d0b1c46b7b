"""How a network's outputs become an action, with the log-probability of that action under the policy that
chose it (what V-trace's and PPO's importance ratios divide by).

A Q-network acts epsilon-greedily on its action values; an actor-critic samples its softmax, never
greedily. Inference replicas, `rtrl play` and the in-process benchmark act through these two functions,
so a recording or a benchmark acts exactly as a replica does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Uniform(Protocol):
    """A seeded source of uniform draws in [0, 1): Python's `random.Random` or numpy's `Generator`."""

    def random(self) -> float: ...


def epsilon_greedy(values: Sequence[float], epsilon: float, rng: Uniform) -> tuple[int, bool, float]:
    """(action, explored, log-probability): a uniformly random action with probability `epsilon`, else the best.

    `values` are finite Q-values (a list: a replica lists them for its answer anyway). The greedy action is
    the first of the largest. One draw u decides both: it explores when u < epsilon, and then u / epsilon is
    uniform in [0, 1) and picks the action. `explored` says the random branch was taken; its action may
    still be the greedy one, which the log-probability counts (1 - epsilon + epsilon / actions)."""
    count = len(values)
    greedy = max(range(count), key=values.__getitem__)
    explored = False
    action = greedy
    if epsilon > 0.0:
        draw = rng.random()
        if draw < epsilon:
            explored = True
            action = min(int(draw / epsilon * count), count - 1)
    probability = (1.0 - epsilon + epsilon / count) if action == greedy else epsilon / count
    return action, explored, math.log(probability)


def sample_softmax(logits: np.ndarray, rng: Uniform) -> tuple[int, float]:
    """(action, log pi(action)) drawn from softmax(`logits`), which must be finite.

    Inverse CDF over the float64 cumulative sum: exact enough, and never returns an action whose
    probability is 0. The clamp guards against rounding at the very top of the range."""
    shifted = logits.astype(np.float64) - np.max(logits)
    log_probs = shifted - math.log(float(np.exp(shifted).sum()))
    cumulative = np.cumsum(np.exp(log_probs))
    action = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    action = min(action, len(logits) - 1)
    return action, float(log_probs[action])
