"""Fixed-length unrolls for V-trace, cut from each gateway's transitions in stream order, and a bounded replay of them.

An unroll is T consecutive steps of one gateway: T + 1 observations (x_T only bootstraps), T actions,
rewards, terminal flags, behaviour log-probabilities and policy versions, and a mask saying which
steps can be learned from. Consecutive unrolls of a gateway share one observation: the bootstrap
observation of one is the first of the next, as in IMPALA's actors.

Rules, applied per gateway as transitions arrive in stream order (gateways may interleave):
- a step is learnable (mask 1) when its successor is known: the next transition is seq + 1 of the same
  episode, or the step terminated (its target does not bootstrap, so the successor does not matter);
- a terminal does not end the unroll: its discount is 0 (vtrace.update sets gamma_t = 0), which stops
  both the bootstrap and the trace, and the next episode continues in the same unroll, as an
  auto-resetting IMPALA actor's does. Cutting there instead would waste the rest of the unroll;
- a truncated step, or a step followed by a gap (a dropped or re-delivered transition, a gateway
  restart), has no successor: it stays in the unroll with mask 0, and the unroll goes on with the
  transition that came next. V-trace gives a masked step rho = c = 0, so the step before it bootstraps
  from the masked step's own observation (a true state of its episode) and no target crosses the gap;
- an unroll is complete when a (T+1)-th transition supplies x_T, or at once when its T-th step
  terminated or was truncated (x_T is then never used; a copy of x_{T-1} stands in). Unrolls without
  a single learnable step are not kept.

Decision observations (algorithms/base.py): each step records in `decision_index` which of the unroll's
observations its action was computed from: its own, an earlier step's of the same episode in this
unroll (a reply that served the step after its own; counted in `decisions_elsewhere`), or none (-1:
the observation was before the unroll's first, or later, after a reply that overtook; counted in
`decisions_unpaired`), in which case the policy is not trained on the step. Fallback steps name their own.

Complete unrolls go into a ring of `capacity` unrolls (the oldest leaves first); `sample` draws
time-major batches uniformly from it, without replacement while there are enough unrolls (V-trace).
`take_newest` instead hands out each stored unroll once, newest first (PPO's batches of fresh data).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rtrl.transitions import Transition


class Unroll(NamedTuple):
    """One gateway's T steps as numpy arrays (time first)."""

    obs: np.ndarray
    """[T + 1, *observation_shape]: x_0 .. x_T."""
    actions: np.ndarray
    """[T] int64."""
    rewards: np.ndarray
    """[T] float32."""
    terminated: np.ndarray
    """[T] float32, 1.0 where the episode terminated during the step."""
    behaviour_log_probs: np.ndarray
    """[T] float32, log mu(a_t | x) as the gateway recorded it (fallback steps included)."""
    mask: np.ndarray
    """[T] float32, 1.0 for steps to learn from, 0.0 for steps without a successor."""
    policy_versions: np.ndarray
    """[T] int64, the checkpoint version that chose each action (-1 for a fallback action)."""
    decision_index: np.ndarray
    """[T] int64, the index in `obs` of the observation each action was computed from (-1: not in the unroll)."""
    fresh: np.ndarray
    """[T] float32, 1.0 where an inference reply chose the action, 0.0 where the fallback policy did."""


class UnrollBatch(NamedTuple):
    """Sampled unrolls, time-major: obs [T + 1, B, *observation_shape], the rest [T, B]."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    behaviour_log_probs: np.ndarray
    mask: np.ndarray
    policy_versions: np.ndarray
    decision_index: np.ndarray
    fresh: np.ndarray


@dataclass
class _OpenUnroll:
    """A gateway's unroll being filled; the newest step's mask is provisional until its successor arrives."""

    steps: list[Transition] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)


def _needs_successor(transition: Transition) -> bool:
    return not (transition.terminated or transition.truncated)


class UnrollBuffer:
    """Cuts unrolls of `unroll_length` steps and keeps the newest `capacity` of them; used from one thread."""

    def __init__(
        self,
        unroll_length: int,
        capacity: int,
        observation_shape: tuple[int, ...],
        observation_dtype: np.dtype,
        seed: int = 0,
    ) -> None:
        if unroll_length < 1:
            raise ValueError(f"an unroll needs at least 1 step, got unroll_length={unroll_length}")
        if capacity < 1:
            raise ValueError("an unroll buffer needs a capacity of at least 1")
        self.unroll_length = unroll_length
        self.capacity = capacity
        self.observation_shape = tuple(observation_shape)
        self.observation_dtype = np.dtype(observation_dtype)
        self._unrolls: deque[Unroll] = deque(maxlen=capacity)
        # Stored unrolls not yet handed out by `take_newest`.
        self._untaken: deque[Unroll] = deque(maxlen=capacity)
        self._open: dict[str, _OpenUnroll] = {}
        self._rng = np.random.default_rng(seed)
        self.transitions_added = 0
        """Transitions ever added."""
        self.unrolls_added = 0
        """Complete unrolls ever stored (with at least one learnable step)."""
        self.unrolls_sampled = 0
        """Unrolls ever drawn into a batch (with repetitions): over `unrolls_added`, the replay ratio."""
        self.steps_masked = 0
        """Steps that will never be learned from because they have no successor (truncation or gap)."""
        self.unrolls_skipped = 0
        """Unrolls `take_newest` passed over because newer ones were waiting (an on-policy learner behind)."""
        self.decisions_elsewhere = 0
        """Fresh steps of stored unrolls whose action came from an earlier step's observation, paired with it."""
        self.decisions_unpaired = 0
        """Fresh steps of stored unrolls whose decision observation is not in their unroll."""

    def __len__(self) -> int:
        """Complete unrolls stored now."""
        return len(self._unrolls)

    @property
    def unpaired(self) -> int:
        """Steps whose policy is never trained on: no successor, or no decision observation."""
        return self.steps_masked + self.decisions_unpaired

    @property
    def untaken(self) -> int:
        """Stored unrolls `take_newest` has not handed out yet."""
        return len(self._untaken)

    def accepts(self, transition: Transition) -> bool:
        obs = transition.observation
        return tuple(obs.shape) == self.observation_shape and obs.dtype == self.observation_dtype

    def add(self, transition: Transition) -> None:
        """Appends `transition` to its gateway's open unroll, storing the unroll once it is complete."""
        if not self.accepts(transition):
            raise ValueError(
                f"observation of shape {list(transition.observation.shape)} and dtype {transition.observation.dtype} "
                f"does not fit an unroll buffer of {list(self.observation_shape)} {self.observation_dtype}"
            )
        self.transitions_added += 1
        gateway = transition.gateway_id
        unroll = self._open.pop(gateway, None)
        if unroll is not None:
            previous = unroll.steps[-1]
            if _needs_successor(previous) and not (
                transition.seq == previous.seq + 1 and transition.episode == previous.episode
            ):
                unroll.mask[-1] = 0.0
                self.steps_masked += 1
            if len(unroll.steps) == self.unroll_length:
                self._store(unroll, bootstrap_obs=transition.observation)
                unroll = None
        if unroll is None:
            unroll = _OpenUnroll()

        unroll.steps.append(transition)
        if transition.truncated:
            unroll.mask.append(0.0)
            self.steps_masked += 1
        else:
            unroll.mask.append(1.0)

        if len(unroll.steps) == self.unroll_length and not _needs_successor(transition):
            # x_T will never be used (discount 0 or mask 0), so there is no reason to wait for it.
            self._store(unroll, bootstrap_obs=transition.observation)
        else:
            self._open[gateway] = unroll

    def _store(self, unroll: _OpenUnroll, bootstrap_obs: np.ndarray) -> None:
        if not any(unroll.mask):
            return  # nothing in it can be learned from
        steps = unroll.steps
        decision_index = [self._decision_index(steps, t) for t in range(len(steps))]
        stored = Unroll(
            obs=np.stack([step.observation for step in steps] + [bootstrap_obs]),
            actions=np.array([step.action for step in steps], dtype=np.int64),
            rewards=np.array([step.reward for step in steps], dtype=np.float32),
            terminated=np.array([1.0 if step.terminated else 0.0 for step in steps], dtype=np.float32),
            behaviour_log_probs=np.array([step.behaviour_log_prob for step in steps], dtype=np.float32),
            mask=np.array(unroll.mask, dtype=np.float32),
            policy_versions=np.array([step.policy_version for step in steps], dtype=np.int64),
            decision_index=np.array(decision_index, dtype=np.int64),
            fresh=np.array([1.0 if step.fresh else 0.0 for step in steps], dtype=np.float32),
        )
        self._unrolls.append(stored)
        if len(self._untaken) == self._untaken.maxlen:
            self.unrolls_skipped += 1  # the oldest untaken one leaves
        self._untaken.append(stored)
        self.unrolls_added += 1

    def _decision_index(self, steps: list[Transition], t: int) -> int:
        """Which step's observation chose step `t`'s action (see Decision observations above), or -1."""
        step = steps[t]
        if not step.fresh or step.action_obs_frame == step.obs_frame:
            return t
        self.decisions_elsewhere += 1
        for earlier in range(t - 1, -1, -1):
            if steps[earlier].episode != step.episode:
                break
            if steps[earlier].obs_frame == step.action_obs_frame:
                return earlier
        self.decisions_elsewhere -= 1
        self.decisions_unpaired += 1
        return -1

    def sample(self, batch_size: int) -> UnrollBatch:
        """Draws `batch_size` stored unrolls uniformly (with replacement only when fewer are stored), time-major."""
        if not self._unrolls:
            raise ValueError("the unroll buffer holds no complete unroll yet; add more transitions before sampling")
        picks = self._rng.choice(len(self._unrolls), size=batch_size, replace=len(self._unrolls) < batch_size)
        unrolls = [self._unrolls[int(index)] for index in picks]
        self.unrolls_sampled += batch_size
        return _time_major(unrolls)

    def take_newest(self, count: int) -> UnrollBatch:
        """The `count` newest unrolls not handed out before, time-major; the older untaken ones are dropped
        (too old for an on-policy batch). Needs `untaken` >= `count`."""
        if len(self._untaken) < count:
            raise ValueError(f"only {len(self._untaken)} new unrolls are stored; wait for {count}")
        unrolls = [self._untaken.pop() for _ in range(count)][::-1]
        self.unrolls_skipped += len(self._untaken)
        self._untaken.clear()
        self.unrolls_sampled += count
        return _time_major(unrolls)


def _time_major(unrolls: list[Unroll]) -> UnrollBatch:
    return UnrollBatch(*(np.stack(arrays, axis=1) for arrays in zip(*unrolls, strict=True)))
