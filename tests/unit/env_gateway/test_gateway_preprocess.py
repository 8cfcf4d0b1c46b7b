"""Preprocessing of pictures and of states: shapes, stacking order, episode restart, each frame processed once."""

from __future__ import annotations

import numpy as np
from gateway_fakes import FakeBackend

from rtrl.services.env_gateway.preprocess import (
    FrameHistory,
    Preprocessor,
    SampledFrame,
    StatePreprocessor,
    make_preprocessor,
)
from rtrl.services.env_gateway.settings import GatewaySettings


def rgb(value: int, shape: tuple[int, int] = (210, 160)) -> np.ndarray:
    return np.full((*shape, 3), value, dtype=np.uint8)


def test_grayscale_frames_stack_to_stack_height_width() -> None:
    pre = Preprocessor(84, 84, grayscale=True)
    frames = [SampledFrame(i, rgb(10 * i)) for i in range(4)]
    observation = pre.stack(frames)
    assert observation.shape == (4, 84, 84) == pre.observation_shape(4)
    assert observation.dtype == np.uint8
    # Oldest first: channel i holds frame i's grey level.
    assert [int(observation[i, 0, 0]) for i in range(4)] == [0, 10, 20, 30]


def test_colour_keeps_three_channels_per_frame() -> None:
    pre = Preprocessor(32, 24, grayscale=False)
    frame = np.zeros((210, 160, 3), dtype=np.uint8)
    frame[..., 0] = 200  # red
    observation = pre.stack([SampledFrame(0, frame), SampledFrame(1, frame)])
    assert observation.shape == (6, 24, 32) == pre.observation_shape(2)
    assert (observation[0] == 200).all() and (observation[1] == 0).all() and (observation[3] == 200).all()


def test_history_restarts_each_episode_by_repeating_its_first_frame() -> None:
    history = FrameHistory(stack=3)
    first, second, third = (SampledFrame(i, rgb(i, (4, 4))) for i in range(3))
    assert [f.frame_index for f in history.reset(first)] == [0, 0, 0]
    assert [f.frame_index for f in history.add(second)] == [0, 0, 1]
    assert [f.frame_index for f in history.add(third)] == [0, 1, 2]
    assert [f.frame_index for f in history.reset(third)] == [2, 2, 2]


def test_sampled_frame_is_preprocessed_once_and_releases_its_raw_pixels() -> None:
    calls: list[int] = []

    class Counting(Preprocessor):
        def frame(self, rgb: np.ndarray) -> np.ndarray:
            calls.append(1)
            return super().frame(rgb)

    pre = Counting(8, 8)
    shared = SampledFrame(0, rgb(5))
    first = pre.stack([shared] * 4)
    second = pre.stack([shared] * 4)
    assert len(calls) == 1
    assert (first == second).all()
    assert shared.rgb is None  # the raw pixels are released once processed


def state(value: float, size: int = 4) -> np.ndarray:
    # float64, as many gym envs return it: the preprocessor casts to the float32 observations travel in.
    return np.full(size, value, dtype=np.float64)


def test_state_frames_stack_oldest_first_to_float32_stack_by_state_size() -> None:
    pre = StatePreprocessor(4)
    frames = [SampledFrame(i, state(0.5 * i)) for i in range(3)]
    observation = pre.stack(frames)
    assert observation.shape == (3, 4) == pre.observation_shape(3)
    assert observation.dtype == np.float32 == pre.dtype
    assert observation[:, 0].tolist() == [0.0, 0.5, 1.0]
    assert pre.frame(state(2.0)).shape == (1, 4)


def test_state_history_pads_an_episode_start_with_its_first_state() -> None:
    pre = StatePreprocessor(2)
    history = FrameHistory(stack=3)
    first, second = SampledFrame(0, state(1.0, 2)), SampledFrame(1, state(2.0, 2))
    assert pre.stack(history.reset(first)).tolist() == [[1.0, 1.0]] * 3
    assert pre.stack(history.add(second)).tolist() == [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]


def test_make_preprocessor_follows_the_backends_observation_kind() -> None:
    settings = GatewaySettings(obs_width=32, obs_height=24, obs_grayscale=False)
    pixels = make_preprocessor(settings, FakeBackend())
    assert isinstance(pixels, Preprocessor) and pixels.observation_shape(2) == (6, 24, 32)
    backend = FakeBackend()
    backend.observation_kind, backend.state_size = "state", 5
    states = make_preprocessor(settings, backend)
    assert isinstance(states, StatePreprocessor)
    assert (states.observation_shape(2), states.dtype) == ((2, 5), np.float32)
