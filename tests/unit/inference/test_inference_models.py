"""Tests of the networks a replica can serve: ImpalaCNN sizes, ModelConfig's width and head, the actor-critic."""

from __future__ import annotations

import pytest
import torch

from rtrl.models import (
    IMPALA_HIDDEN_SIZE,
    ActorCritic,
    ModelConfig,
    QNetwork,
    build_model,
    default_model_config,
    parameter_count,
)

ATARI_STACK = (4, 84, 84)
ACTIONS = 6


@pytest.mark.parametrize(
    ("width", "low", "high"),
    [(1, 0.8e6, 1.25e6), (7, 8e6, 12.5e6), (29, 80e6, 125e6)],
)
def test_impala_widths_give_about_1m_10m_and_100m_parameters_on_atari_frames(
    width: int, low: float, high: float
) -> None:
    config = default_model_config(ATARI_STACK, ACTIONS, "impala_cnn", width)

    # Built on the meta device: shapes only, so counting 100M parameters allocates and initialises nothing.
    with torch.device("meta"):
        count = parameter_count(QNetwork(config))

    assert low <= count <= high
    assert config.hidden_size == IMPALA_HIDDEN_SIZE


def test_impala_answers_one_value_per_action_for_any_image_size() -> None:
    for shape in [ATARI_STACK, (3, 64, 64), (1, 7, 5)]:
        network = QNetwork(default_model_config(shape, ACTIONS, "impala_cnn", 2))

        with torch.no_grad():
            values = network(torch.zeros((2, *shape), dtype=torch.uint8))

        assert values.shape == (2, ACTIONS)


def test_width_travels_in_the_checkpoint_json() -> None:
    config = default_model_config(ATARI_STACK, ACTIONS, "impala_cnn", 7)

    assert ModelConfig.from_json(config.to_json()) == config


def test_config_published_before_width_existed_reads_as_width_1() -> None:
    old_json = {"arch": "nature_cnn", "observation_shape": [4, 84, 84], "action_count": 6, "hidden_size": 512}

    assert ModelConfig.from_json(old_json).width == 1


def test_default_choice_is_unchanged() -> None:
    assert default_model_config(ATARI_STACK, ACTIONS) == ModelConfig("nature_cnn", ATARI_STACK, ACTIONS, 512, 1)
    assert default_model_config((3,), ACTIONS) == ModelConfig("mlp", (3,), ACTIONS, 512, 1)


@pytest.mark.parametrize(
    ("arch", "shape", "width", "message"),
    [
        ("nature_cnn", ATARI_STACK, 7, "only applies to impala_cnn"),
        ("impala_cnn", (3,), 1, "impala_cnn needs observations shaped"),
        ("impala_cnn", ATARI_STACK, 0, "width must be at least 1"),
    ],
)
def test_config_no_network_fits_is_refused(arch: str, shape: tuple[int, ...], width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        default_model_config(shape, ACTIONS, arch, width)


# -- heads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "shape"), [("mlp", (3,)), ("nature_cnn", ATARI_STACK), ("impala_cnn", (4, 24, 24))])
def test_actor_critic_answers_logits_per_action_and_one_value_on_every_torso(arch: str, shape: tuple[int, ...]) -> None:
    config = default_model_config(shape, ACTIONS, arch, head="actor_critic")
    network = build_model(config)

    with torch.no_grad():
        logits, values = network(torch.zeros((2, *shape), dtype=torch.uint8))

    assert isinstance(network, ActorCritic)
    assert logits.shape == (2, ACTIONS)
    assert values.shape == (2,)


def test_actor_critic_has_the_q_networks_torso() -> None:
    q_config = default_model_config(ATARI_STACK, ACTIONS, "impala_cnn", 2)
    ac_config = default_model_config(ATARI_STACK, ACTIONS, "impala_cnn", 2, head="actor_critic")
    with torch.device("meta"):
        q_network, actor_critic = QNetwork(q_config), ActorCritic(ac_config)

    q_torso = {k: v.shape for k, v in q_network.state_dict().items() if k.startswith("torso.")}
    ac_torso = {k: v.shape for k, v in actor_critic.state_dict().items() if k.startswith("torso.")}
    assert q_torso == ac_torso
    # One extra output (the value) is the whole difference.
    assert parameter_count(actor_critic) - parameter_count(q_network) == IMPALA_HIDDEN_SIZE + 1


def test_q_network_weights_keep_their_names_so_published_checkpoints_still_load() -> None:
    names = set(QNetwork(ModelConfig("mlp", (3,), ACTIONS, hidden_size=4)).state_dict())

    assert names == {
        "torso.1.weight",
        "torso.1.bias",
        "head.0.weight",
        "head.0.bias",
        "head.2.weight",
        "head.2.bias",
    }


def test_build_model_follows_the_head() -> None:
    assert type(build_model(ModelConfig("mlp", (3,), ACTIONS))) is QNetwork
    assert type(build_model(ModelConfig("mlp", (3,), ACTIONS, head="actor_critic"))) is ActorCritic


def test_head_travels_in_the_checkpoint_json_and_old_configs_read_as_q() -> None:
    config = default_model_config(ATARI_STACK, ACTIONS, head="actor_critic")
    old_json = {"arch": "nature_cnn", "observation_shape": [4, 84, 84], "action_count": 6, "hidden_size": 512}

    assert config.to_json()["head"] == "actor_critic"
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_json(old_json).head == "q"


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="model head 'dueling' is unknown; use one of q, actor_critic"):
        ModelConfig.from_json({"arch": "mlp", "observation_shape": [3], "action_count": 2, "head": "dueling"})
