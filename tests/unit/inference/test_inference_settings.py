"""Tests of InferenceSettings.from_env: defaults, every variable read, and errors that say what to set."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

from rtrl.config import DEFAULT_CHECKPOINT_DIR, DEFAULT_HOST, DEFAULT_INFERENCE_PORT, SettingsError
from rtrl.models import HEADS
from rtrl.services.inference.policy import Policy
from rtrl.services.inference.settings import ACT_SOCKET_OFF, InferenceSettings
from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.settings import LearnerSettings


def test_defaults_when_nothing_is_set() -> None:
    settings = InferenceSettings.from_env({})

    assert settings == InferenceSettings(
        host=DEFAULT_HOST,
        port=DEFAULT_INFERENCE_PORT,
        replica_id=f"{socket.gethostname()}:{DEFAULT_INFERENCE_PORT}",
        checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
        checkpoint_poll_s=0.1,
        device="cuda" if torch.cuda.is_available() else "cpu",
        torch_threads=1,
        seed=0,
        epsilon_start=1.0,
        workers=16,
        max_batch_size=8,
        max_wait_ms=0.0,
        model_arch="",
        model_width=1,
        algorithm="dqn",
        redis_url="",
        replica_registry="rtrl:replicas",
        advertise_address="",
    )


def test_every_variable_is_read() -> None:
    settings = InferenceSettings.from_env(
        {
            "RTRL_INFERENCE_HOST": "0.0.0.0",
            "RTRL_INFERENCE_PORT": "50070",
            "RTRL_REPLICA_ID": "replica-3",
            "RTRL_CHECKPOINT_DIR": "/shared/checkpoints",
            "RTRL_CHECKPOINT_POLL_S": "0.5",
            "RTRL_CHECKPOINT_LOAD_SPREAD_S": "0.25",
            "RTRL_INFERENCE_DEVICE": "cpu",
            "RTRL_TORCH_THREADS": "2",
            "RTRL_SEED": "42",
            "RTRL_EPSILON_START": "0.3",
            "RTRL_INFERENCE_WORKERS": "8",
            "RTRL_INFERENCE_MAX_BATCH": "4",
            "RTRL_INFERENCE_MAX_WAIT_MS": "2.5",
            "RTRL_MODEL_ARCH": "impala_cnn",
            "RTRL_MODEL_WIDTH": "7",
            "RTRL_ALGORITHM": "vtrace",
            "RTRL_REDIS_URL": "redis://redis:6379/0",
            "RTRL_REPLICA_REGISTRY": "game-a:replicas",
            "RTRL_INFERENCE_ADVERTISE_ADDRESS": "inference-3.example:50061",
        }
    )

    assert settings == InferenceSettings(
        host="0.0.0.0",
        port=50070,
        replica_id="replica-3",
        checkpoint_dir="/shared/checkpoints",
        checkpoint_poll_s=0.5,
        checkpoint_load_spread_s=0.25,
        device="cpu",
        torch_threads=2,
        seed=42,
        epsilon_start=0.3,
        workers=8,
        max_batch_size=4,
        max_wait_ms=2.5,
        model_arch="impala_cnn",
        model_width=7,
        algorithm="vtrace",
        redis_url="redis://redis:6379/0",
        replica_registry="game-a:replicas",
        advertise_address="inference-3.example:50061",
    )


def test_port_zero_leaves_the_replica_name_to_the_bound_port() -> None:
    assert InferenceSettings.from_env({"RTRL_INFERENCE_PORT": "0"}).replica_id == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INFERENCE_PORT", "notaport"),
        ("INFERENCE_PORT", "70000"),
        ("INFERENCE_PORT", "-1"),
        ("INFERENCE_ACT_SOCKET_PORT", "-2"),
        ("INFERENCE_ACT_SOCKET_PORT", "70000"),
        ("INFERENCE_ACT_SOCKET_PORT", "off"),
        ("CHECKPOINT_POLL_S", "0"),
        ("CHECKPOINT_POLL_S", "5"),
        ("CHECKPOINT_LOAD_SPREAD_S", "-1"),
        ("INFERENCE_DEVICE", "tpu"),
        ("TORCH_THREADS", "0"),
        ("SEED", "-3"),
        ("EPSILON_START", "1.5"),
        ("EPSILON_START", "often"),
        ("INFERENCE_WORKERS", "0"),
        ("INFERENCE_MAX_BATCH", "0"),
        ("INFERENCE_MAX_WAIT_MS", "-1"),
        ("MODEL_ARCH", "transformer"),
        ("MODEL_WIDTH", "0"),
        ("ALGORITHM", "a2c"),
    ],
)
def test_invalid_value_names_the_variable_and_what_to_set(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"^RTRL_{name}=.*; set it to "):
        InferenceSettings.from_env({f"RTRL_{name}": value})


def test_the_act_socket_takes_a_port_or_is_turned_off() -> None:
    assert InferenceSettings.from_env({}).act_socket_port == 0
    assert InferenceSettings.from_env({"RTRL_INFERENCE_ACT_SOCKET_PORT": "50071"}).act_socket_port == 50071
    assert InferenceSettings.from_env({"RTRL_INFERENCE_ACT_SOCKET_PORT": "-1"}).act_socket_port == ACT_SOCKET_OFF


def test_fewer_workers_than_the_batch_size_fails_because_a_batch_could_never_fill() -> None:
    with pytest.raises(SettingsError, match=r"^RTRL_INFERENCE_WORKERS=4 is smaller than RTRL_INFERENCE_MAX_BATCH=8"):
        InferenceSettings.from_env({"RTRL_INFERENCE_WORKERS": "4"})

    assert InferenceSettings.from_env({"RTRL_INFERENCE_WORKERS": "4", "RTRL_INFERENCE_MAX_BATCH": "4"}).workers == 4


def test_model_width_without_impala_fails_instead_of_serving_a_smaller_model() -> None:
    with pytest.raises(SettingsError, match=r"^RTRL_MODEL_WIDTH=7 only sizes impala_cnn.*RTRL_MODEL_ARCH=impala_cnn"):
        InferenceSettings.from_env({"RTRL_MODEL_WIDTH": "7"})
    with pytest.raises(SettingsError, match=r"RTRL_MODEL_ARCH is nature_cnn"):
        InferenceSettings.from_env({"RTRL_MODEL_WIDTH": "7", "RTRL_MODEL_ARCH": "nature_cnn"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_fails_at_start() -> None:
    with pytest.raises(SettingsError, match=r"RTRL_INFERENCE_DEVICE=cuda .*set it to cpu or auto"):
        InferenceSettings.from_env({"RTRL_INFERENCE_DEVICE": "cuda"})


def test_settings_are_frozen() -> None:
    settings = InferenceSettings.from_env({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_algorithm_takes_the_learners_choices_and_the_fresh_policy_has_each_ones_head(tmp_path) -> None:
    # RTRL_ALGORITHM is one variable for both services, read from one registry: every algorithm the
    # learner accepts also starts a replica, whose fresh policy is the network that algorithm publishes.
    assert sorted(ALGORITHMS) == ["dqn", "ppo", "vtrace"]
    for algorithm in ALGORITHMS:
        assert LearnerSettings.from_env({"RTRL_ALGORITHM": algorithm}).algorithm == algorithm
        env = {"RTRL_ALGORITHM": algorithm.upper(), "RTRL_CHECKPOINT_DIR": str(tmp_path)}
        settings = InferenceSettings.from_env(env)
        assert settings.algorithm == algorithm
        policy = Policy.from_settings(settings)
        try:
            assert policy.fresh_head == ALGORITHMS[algorithm].head in HEADS
        finally:
            policy.close()
    assert {name: algorithm.head for name, algorithm in ALGORITHMS.items()} == {
        "dqn": "q",
        "vtrace": "actor_critic",
        "ppo": "actor_critic",
    }
    with pytest.raises(SettingsError, match=r"RTRL_ALGORITHM='a2c' is not valid; set it to one of: dqn, vtrace, ppo"):
        InferenceSettings.from_env({"RTRL_ALGORITHM": "a2c"})


def test_a_poll_and_load_spread_beyond_a_second_fail_because_hot_reload_would_be_slower() -> None:
    with pytest.raises(SettingsError, match=r"^RTRL_CHECKPOINT_POLL_S=0.5 plus RTRL_CHECKPOINT_LOAD_SPREAD_S=0.6 "):
        InferenceSettings.from_env({"RTRL_CHECKPOINT_POLL_S": "0.5", "RTRL_CHECKPOINT_LOAD_SPREAD_S": "0.6"})
