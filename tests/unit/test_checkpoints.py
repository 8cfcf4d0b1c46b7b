"""Checkpoint publication: atomic, verified, confined to its directory, never unpickled."""

import json
import random
import threading

import pytest
import torch

from rtrl.checkpoints import LATEST, CheckpointError, CheckpointStore, CheckpointWatcher


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((64, 64), value), "layer.bias": torch.full((64,), value)}


def test_publish_then_read_back(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {"arch": "mlp"}, "epsilon": 0.5}, learner_state={"opt": torch.ones(3)})
    latest = store.latest()
    assert latest is not None and latest.version == 1
    assert latest.metadata["epsilon"] == 0.5
    assert torch.equal(store.load_weights(latest)["layer.weight"], torch.full((64, 64), 1.0))
    assert torch.equal(store.load_learner_state(latest)["opt"], torch.ones(3))


def test_empty_directory_has_no_latest(tmp_path):
    assert CheckpointStore(tmp_path / "missing").latest() is None


def test_old_versions_are_pruned_but_latest_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for version in range(1, 6):
        store.publish(version, weights(version), {"model": {}})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "latest.json",
        "v000000004.json",
        "v000000004.safetensors",
        "v000000005.json",
        "v000000005.safetensors",
    ]


def test_a_version_can_name_an_earlier_learner_state_which_pruning_keeps_while_named(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    first = store.publish(1, weights(1.0), {"model": {}}, learner_state={"opt": torch.ones(3)})
    for version in range(2, 5):
        store.publish(version, weights(version), {"model": {}}, learner_state_of=first)
    latest = store.latest()
    assert latest is not None and latest.version == 4
    assert torch.equal(store.load_weights(latest)["layer.weight"], torch.full((64, 64), 4.0))
    assert torch.equal(store.load_learner_state(latest)["opt"], torch.ones(3))
    # Version 1 is pruned but its learner state stays: versions 3 and 4 name it.
    assert sorted(p.name for p in tmp_path.glob("v*")) == [
        "v000000001.learner.safetensors",
        "v000000003.json",
        "v000000003.safetensors",
        "v000000004.json",
        "v000000004.safetensors",
    ]
    fifth = store.publish(5, weights(5.0), {"model": {}}, learner_state={"opt": torch.zeros(3)})
    store.publish(6, weights(6.0), {"model": {}}, learner_state_of=fifth)
    # No kept version names version 1's state any more.
    assert sorted(p.name for p in tmp_path.glob("*.learner.safetensors")) == ["v000000005.learner.safetensors"]
    assert torch.equal(store.load_learner_state(store.latest())["opt"], torch.zeros(3))


def test_a_version_names_no_learner_state_when_the_one_it_follows_has_none(tmp_path):
    store = CheckpointStore(tmp_path)
    first = store.publish(1, weights(1.0), {"model": {}})
    second = store.publish(2, weights(2.0), {"model": {}}, learner_state_of=first)
    assert "learner_state" not in second.metadata["files"]
    with pytest.raises(CheckpointError, match="no learner_state file"):
        store.load_learner_state(second)
    with pytest.raises(ValueError, match="not both"):
        store.publish(3, weights(3.0), {"model": {}}, learner_state={"opt": torch.ones(1)}, learner_state_of=first)


def test_corrupted_weights_are_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {}})
    path = tmp_path / "v000000001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        store.load_weights(store.latest())


def test_truncated_metadata_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {}})
    (tmp_path / LATEST).write_text('{"format": "rtrl.checkpoint/1", "vers')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        store.latest()


def test_file_names_outside_the_directory_are_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {}})
    meta = json.loads((tmp_path / LATEST).read_text())
    meta["files"]["weights"]["name"] = "../../etc/passwd"
    (tmp_path / LATEST).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        store.latest()


def test_reader_never_sees_a_partial_checkpoint(tmp_path):
    """A reader polling while the learner publishes only ever loads complete, verified versions."""
    store = CheckpointStore(tmp_path, keep=3)
    big = 512  # ~1 MB of weights per version so writes take measurable time
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader():
        while not stop.is_set():
            latest = store.latest()
            if latest is None:
                continue
            try:
                loaded = store.load_weights(latest)
            except CheckpointError as e:
                # Only acceptable failure: the version was pruned between reading latest and its file.
                if "cannot read" not in str(e):
                    errors.append(str(e))
                continue
            value = loaded["w"][0, 0].item()
            if not torch.all(loaded["w"] == value) or value != latest.version:
                errors.append(f"version {latest.version} carried weights of {value}")
            seen.append(latest.version)

    thread = threading.Thread(target=reader)
    thread.start()
    for version in range(1, 40):
        store.publish(version, {"w": torch.full((big, big), float(version))}, {"model": {}})
    stop.set()
    thread.join()
    assert errors == []
    assert seen, "the reader never loaded a checkpoint"
    assert seen == sorted(seen), "a reader saw versions go backwards"


def test_watcher_loads_newer_versions_and_skips_broken_ones(tmp_path):
    store = CheckpointStore(tmp_path)
    loaded: list[int] = []
    watcher = CheckpointWatcher(store, lambda checkpoint, w: loaded.append(checkpoint.version))
    assert watcher.poll_once() is False
    store.publish(1, weights(1.0), {"model": {}})
    assert watcher.poll_once() is True
    store.publish(2, weights(2.0), {"model": {}})
    (tmp_path / "v000000002.safetensors").write_bytes(b"garbage")
    assert watcher.poll_once() is False
    assert watcher.failures == 1 and watcher.loaded_version == 1
    assert watcher.poll_once() is False, "a broken version is not retried over and over"
    assert watcher.failures == 1
    store.publish(3, weights(3.0), {"model": {}})
    assert watcher.poll_once() is True
    assert loaded == [1, 3]


class DrawnDelays(random.Random):
    """Draws the given fractions of the spread, in order."""

    def __init__(self, *fractions: float) -> None:
        super().__init__()
        self.fractions = list(fractions)

    def uniform(self, a: float, b: float) -> float:
        return a + self.fractions.pop(0) * (b - a)


def test_a_spread_watcher_loads_a_new_version_after_its_drawn_wait(tmp_path):
    store = CheckpointStore(tmp_path)
    loaded: list[int] = []
    clock = [10.0]
    watcher = CheckpointWatcher(
        store,
        lambda checkpoint, w: loaded.append(checkpoint.version),
        load_spread_s=0.4,
        rng=DrawnDelays(0.5, 0.25),
        now_s=lambda: clock[0],
    )
    store.publish(1, weights(1.0), {"model": {}})
    assert watcher.poll_once(spread=True) is False  # seen at 10.0: due at 10.2
    clock[0] = 10.19
    store.publish(2, weights(2.0), {"model": {}})  # a newer version does not restart the wait
    assert watcher.poll_once(spread=True) is False
    clock[0] = 10.2
    assert watcher.poll_once(spread=True) is True
    assert loaded == [2]
    store.publish(3, weights(3.0), {"model": {}})
    assert watcher.poll_once(spread=True) is False  # a fresh wait: due at 10.3
    assert watcher.poll_once() is True, "an unspread poll (before serving) loads at once"
    assert loaded == [2, 3]


def test_an_unreadable_latest_pointer_counts_once_however_often_it_is_polled(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {}})
    watcher = CheckpointWatcher(store, lambda checkpoint, w: None)
    assert watcher.poll_once() is True
    (tmp_path / LATEST).write_text('{"format": "rtrl.checkpoint/1", "vers')
    for _ in range(5):
        assert watcher.poll_once() is False
    assert watcher.failures == 1 and "not valid JSON" in watcher.last_error
    store.publish(2, weights(2.0), {"model": {}})
    assert watcher.poll_once() is True and watcher.loaded_version == 2


def test_watcher_counts_errors_raised_by_the_loader(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(1, weights(1.0), {"model": {}})

    def refuse(checkpoint, w):
        raise CheckpointError("model does not fit")

    watcher = CheckpointWatcher(store, refuse)
    assert watcher.poll_once() is False
    assert watcher.failures == 1 and watcher.loaded_version == 0


def test_highest_version_looks_past_a_latest_pointer_that_went_backwards(tmp_path):
    store = CheckpointStore(tmp_path, keep=10)
    assert store.highest_version() == 0
    for version in (1, 2, 3):
        store.publish(version, weights(version), {"model": {}})
    # latest.json restored from an older copy: it names version 1 while 2 and 3 are on disk.
    (tmp_path / LATEST).write_bytes((tmp_path / "v000000001.json").read_bytes())
    assert store.latest().version == 1
    assert store.highest_version() == 3
