"""One Transition builder for the learner's unit tests: every field has a plain default and any can be
set by name, so each test file says only what its tests vary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rtrl.transitions import Transition


def make_transition(gateway: str = "gw-a", seq: int = 0, **fields: Any) -> Transition:
    """A fresh, non-terminal transition of `gateway`'s step `seq` (step and obs_frame = seq), its action
    computed from its own observation (action_obs_frame = obs_frame; -1 when `fresh=False`)."""
    values: dict[str, Any] = {
        "gateway_id": gateway,
        "seq": seq,
        "episode": 0,
        "step": seq,
        "obs_frame": seq,
        "observation": np.zeros(3, dtype=np.float32),
        "action": 0,
        "action_count": 2,
        "reward": 0.0,
        "terminated": False,
        "truncated": False,
        "fresh": True,
        "fallback_policy": 1,
        "staleness_frames": 0,
        "policy_version": 1,
        "behaviour_log_prob": 0.0,
        "obs_captured_unix_ns": 0,
        "action_applied_unix_ns": 0,
    }
    values.update(fields)
    if "action_obs_frame" not in fields:
        values["action_obs_frame"] = values["obs_frame"] if values["fresh"] else -1
    return Transition(**values)


def marked_observation(gateways: Sequence[str], gateway: str, seq: int, episode: int) -> np.ndarray:
    """An observation that says whose it is: [index of `gateway`, seq, episode]."""
    return np.array([gateways.index(gateway), seq, episode], dtype=np.float32)
