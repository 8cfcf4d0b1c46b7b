"""Every registered algorithm end to end without Redis: transitions -> its source -> updates -> a published
checkpoint -> served by inference -> resumed exactly.

What the learner loop does, step by step through the interface in rtrl/services/learner/algorithms/base.py,
with the real CheckpointStore and the real inference Policy; a new algorithm is covered by being registered.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rtrl.checkpoints import CheckpointStore
from rtrl.models import ModelConfig, default_model_config
from rtrl.services.inference.policy import Policy
from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.transitions import Transition

OBS_SHAPE = (3,)
ACTIONS = 3


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def stream(count: int, rng: np.random.Generator) -> list[Transition]:
    """One gateway, 10-step episodes, a fallback every fifth step, fresh actions from version 0, every
    seventh step's action computed from the step before's observation."""
    transitions = []
    for seq in range(count):
        fresh = seq % 5 != 0
        action = int(rng.integers(ACTIONS))
        transitions.append(
            Transition(
                gateway_id="gw-0",
                seq=seq,
                episode=seq // 10,
                step=seq % 10,
                obs_frame=seq * 4,
                observation=rng.normal(size=OBS_SHAPE).astype(np.float32),
                action=action if fresh else 0,
                action_count=ACTIONS,
                reward=1.0 if action == 2 else 0.0,
                terminated=seq % 10 == 9,
                truncated=False,
                fresh=fresh,
                fallback_policy=1,
                staleness_frames=4 if fresh else 0,
                policy_version=0 if fresh else -1,
                behaviour_log_prob=float(-np.log(ACTIONS)) if fresh else 0.0,
                obs_captured_unix_ns=0,
                action_applied_unix_ns=0,
                action_obs_frame=(seq - (seq % 7 == 0 and seq % 10 > 0)) * 4 if fresh else -1,
            )
        )
    return transitions


# Small enough to train on 60 transitions; each algorithm's own defaults otherwise.
SMALL: dict[str, dict[str, Any]] = {
    "dqn": {"batch_size": 8, "learning_starts": 8, "buffer_size": 100},
    "vtrace": {"unroll_length": 5, "batch_size": 4, "learning_starts": 4, "replay_capacity": 32},
    "ppo": {"unroll_length": 5, "batch_unrolls": 2, "epochs": 3, "minibatches": 2},
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_an_algorithm_trains_from_its_source_publishes_what_inference_serves_and_resumes_exactly(
    name: str, tmp_path: Path
) -> None:
    algorithm_class = ALGORITHMS[name]
    config = replace(algorithm_class.config_class(), **SMALL.get(name, {}))
    model_config = default_model_config(OBS_SHAPE, ACTIONS, head=algorithm_class.head)
    algorithm = algorithm_class(config, model_config, "cpu", seed=0)
    source = algorithm.make_source(OBS_SHAPE, np.dtype(np.float32), seed=0)
    for transition in stream(60, np.random.default_rng(0)):
        source.add(transition)

    updates = 0
    while algorithm.ready(source) and updates < 5:
        metrics = algorithm.update(algorithm.sample(source))
        assert torch.isfinite(metrics["loss"])
        updates += 1
    assert updates == 5 == algorithm.updates
    assert source.decisions_elsewhere > 0  # type: ignore[attr-defined]

    store = CheckpointStore(tmp_path / "checkpoints")
    store.publish(
        1,
        algorithm.policy_weights(),
        {
            "algorithm": name,
            "model": model_config.to_json(),
            "epsilon": 0.0,
            "updates": algorithm.updates,
            "hyperparameters": asdict(config),
        },
        learner_state=algorithm.learner_state(),
    )

    policy = Policy(tmp_path / "checkpoints", replica_id="replica-under-test", algorithm=name)
    try:
        assert policy.load_initial()
        observation = np.array([0.3, -1.0, 0.5], dtype=np.float32)
        answer = policy.act(observation, ACTIONS, None)
    finally:
        policy.close()
    assert answer.checkpoint_version == 1
    served = algorithm_class.head
    network = algorithm.network if served == "actor_critic" else algorithm.q_network  # type: ignore[attr-defined]
    with torch.no_grad():
        outputs = network(torch.from_numpy(observation[None]))
    values = outputs[0] if served == "actor_critic" else outputs
    assert answer.action_values == pytest.approx(values[0].tolist(), abs=1e-6)
    if served == "actor_critic":
        expected = torch.log_softmax(values[0], -1)[answer.action].item()
        assert answer.behaviour_log_prob == pytest.approx(expected, abs=1e-5)

    latest = store.latest()
    assert latest is not None and latest.metadata["algorithm"] == name
    resumed = algorithm_class(config, ModelConfig.from_json(latest.metadata["model"]), "cpu", seed=1)
    resumed.load_state(store.load_weights(latest), store.load_learner_state(latest), latest.metadata["updates"])
    assert resumed.updates == 5
    # The same next batch makes the same update (a sampled batch is data, so each gets an equal copy).
    batch = algorithm.sample(source)
    assert torch.equal(algorithm.update(batch)["loss"], resumed.update(batch)["loss"])
    for x, y in zip(algorithm.policy_weights().values(), resumed.policy_weights().values(), strict=True):
        assert torch.equal(x, y)
