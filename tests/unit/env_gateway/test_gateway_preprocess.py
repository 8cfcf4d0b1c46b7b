"""Preprocessing: shapes, stacking order, episode restart, and each frame processed once."""

from __future__ import annotations

import numpy as np

from services.env_gateway.preprocess import FrameHistory, Preprocessor, SampledFrame


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
