"""V-trace end to end without Redis: transitions -> unrolls -> updates -> a published checkpoint -> served and resumed.

What the learner loop will do once it runs V-trace, step by step, with the real CheckpointStore and the
real inference Policy, so the pieces are known to fit before the loop is wired to them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from rtrl.checkpoints import CheckpointStore
from rtrl.models import ALGORITHM_HEADS, ModelConfig, default_model_config
from rtrl.transitions import Transition
from services.inference.policy import Policy
from services.learner import vtrace
from services.learner.trajectories import UnrollBuffer
from services.learner.vtrace import VTraceConfig

OBS_SHAPE = (3,)
ACTIONS = 3


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def stream(count: int, rng: np.random.Generator) -> list[Transition]:
    """One gateway, 10-step episodes, a fallback every fifth step, fresh actions from version 0."""
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
            )
        )
    return transitions


def test_vtrace_trains_on_unrolls_publishes_a_checkpoint_inference_serves_and_a_learner_resumes(
    tmp_path: Path,
) -> None:
    config = VTraceConfig(unroll_length=5, batch_size=4, learning_starts=4, replay_capacity=32)
    model_config = default_model_config(OBS_SHAPE, ACTIONS, head=ALGORITHM_HEADS[vtrace.ALGORITHM])
    agent = vtrace.make_agent(config, model_config, "cpu", seed=0)
    unrolls = UnrollBuffer(config.unroll_length, config.replay_capacity, OBS_SHAPE, np.dtype(np.float32), seed=0)
    for transition in stream(60, np.random.default_rng(0)):
        unrolls.add(transition)

    updates = 0
    while vtrace.ready_to_update(config, len(unrolls), unrolls.unrolls_added, unrolls.unrolls_sampled) and updates < 5:
        batch = unrolls.sample(config.batch_size)
        loss = vtrace.update(
            agent,
            b_obs=torch.from_numpy(batch.obs),
            b_actions=torch.from_numpy(batch.actions),
            b_rewards=torch.from_numpy(batch.rewards),
            b_terminated=torch.from_numpy(batch.terminated),
            b_behaviour_log_probs=torch.from_numpy(batch.behaviour_log_probs),
            b_mask=torch.from_numpy(batch.mask),
        )
        assert torch.isfinite(loss)
        updates += 1
    assert updates == 5

    store = CheckpointStore(tmp_path / "checkpoints")
    learner_state, counters = vtrace.export_learner_state(agent)
    store.publish(
        1,
        vtrace.policy_weights(agent),
        {
            "algorithm": vtrace.ALGORITHM,
            "model": model_config.to_json(),
            "epsilon": vtrace.epsilon_at(60, config),
            **counters,
            "hyperparameters": asdict(config),
        },
        learner_state=learner_state,
    )

    policy = Policy(tmp_path / "checkpoints", replica_id="replica-under-test", algorithm="vtrace")
    try:
        assert policy.load_initial()
        observation = np.array([0.3, -1.0, 0.5], dtype=np.float32)
        answer = policy.act(observation, ACTIONS, None)
    finally:
        policy.close()
    with torch.no_grad():
        logits, _ = agent.network(torch.from_numpy(observation[None]))
    assert answer.checkpoint_version == 1
    assert answer.action_values == pytest.approx(logits[0].tolist(), abs=1e-6)
    assert answer.behaviour_log_prob == pytest.approx(torch.log_softmax(logits[0], -1)[answer.action].item(), abs=1e-5)

    latest = store.latest()
    assert latest is not None and latest.metadata["algorithm"] == "vtrace"
    resumed = vtrace.make_agent(config, ModelConfig.from_json(latest.metadata["model"]), "cpu", seed=1)
    vtrace.import_state(
        resumed, store.load_weights(latest), store.load_learner_state(latest), {"updates": latest.metadata["updates"]}
    )
    assert resumed.updates == 5
    batch = unrolls.sample(config.batch_size)
    tensors = [
        torch.from_numpy(array)
        for array in (batch.obs, batch.actions, batch.rewards, batch.terminated, batch.behaviour_log_probs, batch.mask)
    ]
    assert torch.equal(vtrace.update(agent, *tensors), vtrace.update(resumed, *tensors))
