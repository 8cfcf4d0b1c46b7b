"""Frame fan-out: newest wins per viewer, every_nth_frame, and closing wakes readers."""

from __future__ import annotations

import threading

import numpy as np

from rtrl.services.env_gateway.clock import ViewerFrame
from rtrl.services.env_gateway.viewers import VIEWER_QUEUE_FRAMES, FrameFanout

RGB = np.zeros((2, 2, 3), dtype=np.uint8)


def frame(index: int) -> ViewerFrame:
    return ViewerFrame(index, RGB, 0, False, 0, index)


def test_slow_viewer_skips_old_frames_and_counts_them() -> None:
    fanout = FrameFanout()
    viewer = fanout.subscribe()
    for i in range(10):
        fanout.publish(frame(i))
    received = [viewer.get(0.0) for _ in range(VIEWER_QUEUE_FRAMES)]
    assert [f.frame_index for f in received if f] == list(range(10 - VIEWER_QUEUE_FRAMES, 10))
    assert viewer.frames_skipped == 10 - VIEWER_QUEUE_FRAMES


def test_every_nth_frame_filters_before_queueing() -> None:
    fanout = FrameFanout()
    viewer = fanout.subscribe(every_nth_frame=3)
    got = []
    for i in range(7):
        fanout.publish(frame(i))
        f = viewer.get(0.0)
        if f is not None:
            got.append(f.frame_index)
    assert got == [0, 3, 6]
    assert viewer.frames_skipped == 0


def test_unsubscribed_viewer_gets_nothing_and_close_wakes_a_waiting_reader() -> None:
    fanout = FrameFanout()
    viewer = fanout.subscribe()
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(viewer.get(30.0)))
    reader.start()
    fanout.close()
    reader.join()
    assert result == [None]
    assert len(fanout) == 0
    fanout.publish(frame(0))
    assert viewer.get(0.0) is None


def test_a_state_backend_is_rendered_only_for_frames_a_viewer_takes() -> None:
    pictures = iter(np.full((2, 2, 3), value, np.uint8) for value in range(100))
    rendered: list[int] = []

    def render() -> np.ndarray:
        picture = next(pictures)
        rendered.append(int(picture[0, 0, 0]))
        return picture

    fanout = FrameFanout(render)
    state = np.zeros(4, np.float32)
    fanout.publish(ViewerFrame(0, state, 0, False, 0, 0))
    assert rendered == []  # nobody watches: nothing is rendered
    viewer = fanout.subscribe(every_nth_frame=2)
    for index in range(1, 5):
        fanout.publish(ViewerFrame(index, state, 0, False, 0, index))
    assert rendered == [0, 1]  # frames 2 and 4 only
    got = [viewer.get(0.0) for _ in range(2)]
    assert [(f.frame_index, f.rgb.shape, int(f.rgb[0, 0, 0])) for f in got if f] == [
        (2, (2, 2, 3), 0),
        (4, (2, 2, 3), 1),
    ]
