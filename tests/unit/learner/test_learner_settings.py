"""LearnerSettings.from_env: defaults, every algorithm's fields as variables, and errors that name the variable."""

from __future__ import annotations

import socket
from dataclasses import fields
from pathlib import Path

import pytest

from rtrl.config import DEFAULT_CHECKPOINT_DIR, DEFAULT_HOST, DEFAULT_LEARNER_PORT, DEFAULT_STREAM, SettingsError
from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.algorithms.dqn import DQNConfig
from rtrl.services.learner.algorithms.ppo import PPOConfig
from rtrl.services.learner.algorithms.vtrace import VTraceConfig
from rtrl.services.learner.settings import LearnerSettings


def test_defaults_without_any_variable() -> None:
    settings = LearnerSettings.from_env({})
    assert settings.host == DEFAULT_HOST
    assert settings.port == DEFAULT_LEARNER_PORT
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.stream == DEFAULT_STREAM
    assert settings.consumer_group == "learner"
    assert settings.consumer_name == f"learner-{socket.gethostname()}"
    assert settings.checkpoint_dir == Path(DEFAULT_CHECKPOINT_DIR)
    assert (settings.checkpoint_every_updates, settings.checkpoint_keep) == (100, 5)
    assert (settings.algorithm, settings.torch_threads, settings.device, settings.seed) == ("dqn", 1, "auto", 0)
    assert settings.config == settings.hyperparameters["dqn"] == DQNConfig()
    assert settings.hyperparameters == {"dqn": DQNConfig(), "vtrace": VTraceConfig(), "ppo": PPOConfig()}
    assert (settings.model_arch, settings.model_width) == ("", 1)


def test_every_variable_is_read() -> None:
    settings = LearnerSettings.from_env(
        {
            "RTRL_LEARNER_HOST": "0.0.0.0",
            "RTRL_LEARNER_PORT": "0",
            "RTRL_REDIS_URL": "redis://redis:6379/1",
            "RTRL_STREAM": "s",
            "RTRL_CONSUMER_GROUP": "g",
            "RTRL_CONSUMER_NAME": "c",
            "RTRL_CHECKPOINT_DIR": "/tmp/ck",
            "RTRL_CHECKPOINT_EVERY_UPDATES": "7",
            "RTRL_CHECKPOINT_KEEP": "3",
            "RTRL_CHECKPOINT_EVERY_S": "0.5",
            "RTRL_ALGORITHM": "DQN",
            "RTRL_TORCH_THREADS": "2",
            "RTRL_LEARNER_DEVICE": "cuda:1",
            "RTRL_SEED": "42",
            "RTRL_MODEL_ARCH": "impala_cnn",
            "RTRL_MODEL_WIDTH": "7",
        }
    )
    assert settings == LearnerSettings(
        host="0.0.0.0",
        port=0,
        redis_url="redis://redis:6379/1",
        stream="s",
        consumer_group="g",
        consumer_name="c",
        checkpoint_dir=Path("/tmp/ck"),
        checkpoint_every_updates=7,
        checkpoint_keep=3,
        checkpoint_every_s=0.5,
        algorithm="dqn",
        torch_threads=2,
        device="cuda:1",
        seed=42,
        model_arch="impala_cnn",
        model_width=7,
    )


def test_every_dqn_field_is_a_variable_parsed_by_its_type() -> None:
    overrides = {
        "learning_rate": ("3e-4", 3e-4),
        "batch_size": ("64", 64),
        "gamma": ("0.9", 0.9),
        "buffer_size": ("1000", 1000),
        "learning_starts": ("0", 0),
        "target_network_frequency": ("10", 10),
        "epsilon_start": ("0.5", 0.5),
        "epsilon_end": ("0.01", 0.01),
        "epsilon_decay_steps": ("20", 20),
        "max_grad_norm": ("1.5", 1.5),
        "double_dqn": ("true", True),
        "adam_eps": ("1e-8", 1e-8),
        "n_step": ("3", 3),
        "max_replay_ratio": ("128", 128.0),
    }
    assert set(overrides) == {f.name for f in fields(DQNConfig)}, "a new DQN field needs a case here"
    env = {f"RTRL_DQN_{name.upper()}": raw for name, (raw, _) in overrides.items()}
    config = LearnerSettings.from_env(env).hyperparameters["dqn"]
    for name, (_, value) in overrides.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("RTRL_CHECKPOINT_EVERY_UPDATES", "abc", "an integer"),
        ("RTRL_CHECKPOINT_EVERY_UPDATES", "0", "1 or more"),
        ("RTRL_LEARNER_PORT", "70000", "0..65535"),
        ("RTRL_REDIS_URL", "localhost:6379", "redis://"),
        ("RTRL_ALGORITHM", "a2c", "dqn, vtrace, ppo"),
        ("RTRL_LEARNER_DEVICE", "tpu", "auto, cpu, cuda"),
        ("RTRL_TORCH_THREADS", "0", "1 or more"),
        ("RTRL_DQN_GAMMA", "1.5", "between 0 and 1"),
        ("RTRL_DQN_BATCH_SIZE", "32.5", "an integer"),
        ("RTRL_DQN_DOUBLE_DQN", "maybe", "true or false"),
        ("RTRL_DQN_LEARNING_RATE", "0", "greater than 0"),
        ("RTRL_DQN_BUFFER_SIZE", "8", "batch size"),
        ("RTRL_PPO_CLIP_COEF", "0", "greater than 0"),
        ("RTRL_PPO_MINIBATCHES", "100000", "at most the steps of a batch"),
        ("RTRL_MODEL_ARCH", "resnet", "nature_cnn, mlp, impala_cnn"),
        ("RTRL_MODEL_WIDTH", "7", "only sizes impala_cnn"),
    ],
)
def test_invalid_values_raise_a_settings_error_naming_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        LearnerSettings.from_env({variable: value})
    assert variable in str(caught.value)
    assert says in str(caught.value)


def test_vtrace_lag_and_backpressure_settings_are_read() -> None:
    settings = LearnerSettings.from_env(
        {
            "RTRL_ALGORITHM": "vtrace",
            "RTRL_VTRACE_UNROLL_LENGTH": "8",
            "RTRL_VTRACE_RHO_BAR": "2.0",
            "RTRL_MAX_POLICY_LAG_VERSIONS": "3",
            "RTRL_LEARNER_MAX_LAG_ENTRIES": "0",
        }
    )
    assert settings.algorithm == "vtrace"
    assert settings.config == VTraceConfig(unroll_length=8, rho_bar=2.0)
    assert (settings.max_policy_lag_versions, settings.max_lag_entries) == (3, 0)
    defaults = LearnerSettings.from_env({})
    assert defaults.hyperparameters["vtrace"] == VTraceConfig()
    assert (defaults.max_policy_lag_versions, defaults.max_lag_entries) == (0, 2000)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("RTRL_VTRACE_C_BAR", "2.0", "at most rho_bar"),
        ("RTRL_VTRACE_GAMMA", "1.5", "between 0 and 1"),
        ("RTRL_MAX_POLICY_LAG_VERSIONS", "-1", "0 or more"),
        ("RTRL_LEARNER_MAX_LAG_ENTRIES", "many", "an integer"),
    ],
)
def test_invalid_vtrace_and_data_settings_name_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        LearnerSettings.from_env({variable: value})
    assert variable in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_field_of_every_algorithm_is_a_variable_of_its_name(name: str) -> None:
    # A value unlike the default for each field, of the field's type and valid for the algorithm.
    config_class = ALGORITHMS[name].config_class
    default = config_class()
    changed: dict[str, object] = {}
    for f in fields(config_class):
        value = getattr(default, f.name)
        if isinstance(value, bool):
            changed[f.name] = not value
        elif isinstance(value, int):
            changed[f.name] = value + 1
        else:
            changed[f.name] = value * 0.5
    env = {f"RTRL_{name.upper()}_{field.upper()}": str(value).lower() for field, value in changed.items()}
    config = LearnerSettings.from_env({**env, "RTRL_ALGORITHM": name}).config
    assert config == config_class(**changed)
