"""TensorBoard event files from a real learner on a real Redis stream, read back record by record.

The files are TFRecord streams of `Event` protos (tensorboardX's own proto classes parse them); each
record's length and payload carry masked CRC-32C checksums, checked here as TensorBoard checks them.
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from pathlib import Path

from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event

from rtrl.services.learner.loop import Learner
from rtrl.services.learner.tensorboard import TensorBoardLog


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> list[Event]:
    data = path.read_bytes()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert length_crc == masked_crc(header), f"corrupt length at byte {offset} of {path}"
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert payload_crc == masked_crc(payload), f"corrupt record at byte {offset} of {path}"
        events.append(Event.FromString(payload))
        offset += 16 + length
    return events


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    values: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in directory.glob("events.out.tfevents.*"):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    values[value.tag].append((event.step, value.simple_value))
    return values


def test_learner_writes_losses_returns_lag_throughput_and_hyperparameters(
    make_settings, publish, transition, wait_until, tmp_path
) -> None:
    # Episodes of 25 steps with a reward of 1 every 5th step: each episode's return is 5.
    publish([transition(seq) for seq in range(100)])
    settings = make_settings(tensorboard_dir=str(tmp_path / "tensorboard"))
    learner = Learner(settings)
    interval_s = 0.1
    tensorboard = TensorBoardLog(learner, settings.tensorboard_dir, interval_s=interval_s)
    learner.start()
    tensorboard.start()
    try:
        wait_until(lambda: learner.status().transitions_consumed == 100, "every transition consumed")
        wait_until(lambda: learner.status().updates >= 20, "20 updates")
        wait_until(lambda: tensorboard.episodes_written == 4 and tensorboard.samples_written >= 3, "4 episodes")
        # A second batch once a sample has counted the first one whole: its consumption must show as a rate.
        publish([transition(seq) for seq in range(100, 150)])
        wait_until(lambda: learner.status().transitions_consumed == 150, "the second batch consumed")
        # Two more samples: the second of them reads the status after the last transition was consumed.
        samples_then = tensorboard.samples_written
        wait_until(lambda: tensorboard.samples_written >= samples_then + 2, "two samples after the second batch")
    finally:
        learner.stop()
        tensorboard.stop()

    written = scalars(tmp_path / "tensorboard")
    assert [value for _, value in written["charts/episode_return"]] == [5.0] * 6
    assert [value for _, value in written["charts/episode_length"]] == [25.0] * 6
    losses = [value for _, value in written["losses/loss"]]
    assert losses and all(math.isfinite(loss) and loss >= 0 for loss in losses)
    assert any(loss > 0 for loss in losses), "a DQN update on these rewards has a non-zero loss"
    steps = [step for step, _ in written["losses/loss"]]
    assert steps == sorted(steps) and steps[-1] == learner.status().updates
    assert max(value for _, value in written["throughput/updates_per_s"]) > 0
    rates = [value for _, value in written["throughput/transitions_per_s"]]
    # Every sample but the first (nothing earlier to count from), stop()'s last one included, has a rate.
    assert len(rates) == tensorboard.samples_written - 1
    # The second batch was counted; nothing came after it; and no sample (at least interval_s after the one
    # before it, stop()'s aside, which counts nothing here) saw more than all 150 transitions.
    assert max(rates) > 0 and rates[-1] == 0.0
    assert all(0.0 <= rate <= 150 / interval_s for rate in rates), rates
    # Synthetic transitions come from the fresh policy (version -1) while the learner publishes 1, 2, ...
    assert all(value >= 1 for _, value in written["policy_lag/versions_mean"])
    assert [value for _, value in written["checkpoints/version"]][-1] == learner.status().checkpoint_version

    texts = [
        value.tensor.string_val[0].decode()
        for path in (tmp_path / "tensorboard").glob("events.out.tfevents.*")
        for event in read_events(path)
        for value in event.summary.value
        if value.tag.startswith("hyperparameters")
    ]
    assert texts and "|learning_rate|0.0001|" in texts[0] and "|algorithm|dqn|" in texts[0]
    [hparams_file] = (tmp_path / "tensorboard" / "hparams").glob("events.out.tfevents.*")
    hparams_events = read_events(hparams_file)
    plugins = {v.metadata.plugin_data.plugin_name for e in hparams_events for v in e.summary.value}
    assert "hparams" in plugins
    final = {v.tag: v.simple_value for e in hparams_events for v in e.summary.value if v.HasField("simple_value")}
    assert final["hparam/mean_episode_return"] == 5.0
    assert final["hparam/updates"] == learner.status().updates
