"""Versioned checkpoints on a shared directory: safetensors weights plus JSON metadata, published atomically.

Layout of the checkpoint directory:

    v000000012.safetensors          policy weights of version 12
    v000000012.learner.safetensors  optimizer and target-network state (the learner resumes from it)
    v000000012.json                 metadata of version 12 (model config, counters, file hashes)
    latest.json                     a copy of the newest version's metadata: the `latest` pointer

A version may carry no learner state of its own and name an earlier version's instead: the replicas
need only the weights, and the learner's state is 3 times their size (Adam's two moments and the target
network), so writing it with every version made each publication 4 times what the replicas read.
Pruning keeps every file that a kept version's metadata names.

Every file is written under a temporary name, flushed to disk and renamed into place, and
`latest.json` is replaced only after the files it names are complete, so a reader either sees the
previous version or the new one, never a partial file. Readers verify the SHA-256 named in the
metadata and refuse file names that would leave the directory. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

log = logging.getLogger(__name__)

FORMAT = "rtrl.checkpoint/1"
LATEST = "latest.json"
_FILE_NAME = re.compile(r"^v\d{9}(\.learner)?\.safetensors$")
_VERSION_FILE = re.compile(r"^v(\d{9})(\.json|\.safetensors|\.learner\.safetensors)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or otherwise unusable. The message says which and why."""


@dataclass(frozen=True)
class Checkpoint:
    """One published version as named by its metadata."""

    version: int
    metadata: dict[str, Any]

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.metadata["model"])


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """Publishes and reads versioned checkpoints in one directory."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 5) -> None:
        self.directory = Path(directory)
        self.keep = max(2, keep)

    # -- publishing (the learner) ------------------------------------------------------------------

    def publish(
        self,
        version: int,
        weights: dict[str, torch.Tensor],
        metadata: dict[str, Any],
        learner_state: dict[str, torch.Tensor] | None = None,
        learner_state_of: Checkpoint | None = None,
    ) -> Checkpoint:
        """Writes version `version` and then points `latest.json` at it. Raises CheckpointError on failure.

        `learner_state` is written with this version; `learner_state_of`, an earlier version, is named
        instead: the new version then names the same learner-state file as that one does (none if it
        names none)."""
        if version < 1:
            raise ValueError("checkpoint versions start at 1")
        if learner_state is not None and learner_state_of is not None:
            raise ValueError("give either learner_state or learner_state_of, not both")
        stem = f"v{version:09d}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            weight_bytes = save_safetensors({k: v.detach().cpu().contiguous() for k, v in weights.items()})
            files = {"weights": (f"{stem}.safetensors", weight_bytes)}
            if learner_state is not None:
                state_bytes = save_safetensors({k: v.detach().cpu().contiguous() for k, v in learner_state.items()})
                files["learner_state"] = (f"{stem}.learner.safetensors", state_bytes)
            entries = {role: {"name": name, "sha256": _sha256(data)} for role, (name, data) in files.items()}
            if learner_state_of is not None and "learner_state" in learner_state_of.metadata["files"]:
                entries["learner_state"] = dict(learner_state_of.metadata["files"]["learner_state"])
            meta = {
                **metadata,
                "format": FORMAT,
                "version": version,
                "created_unix_ms": int(time.time() * 1000),
                "files": entries,
            }
            for name, data in files.values():
                _write_atomically(self.directory / name, data)
            meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()
            _write_atomically(self.directory / f"{stem}.json", meta_bytes)
            _write_atomically(self.directory / LATEST, meta_bytes)
        except OSError as e:
            raise CheckpointError(f"could not publish checkpoint {version} to {self.directory}: {e}") from e
        self._prune(version)
        return Checkpoint(version, meta)

    def _prune(self, newest: int) -> None:
        """Deletes the files of versions `keep` or more below `newest`, except those a kept version names."""
        old: list[Path] = []
        named: set[str] = set()
        for path in self.directory.glob("v*"):
            match = _VERSION_FILE.match(path.name)
            if not match:
                continue
            if int(match.group(1)) <= newest - self.keep:
                old.append(path)
            elif path.name.endswith(".json"):
                try:
                    files = self._parse_metadata(path.read_bytes(), path).metadata["files"]
                    named.update(entry["name"] for entry in files.values())
                except (CheckpointError, OSError):
                    return  # a kept version we cannot read may name any file: delete nothing this time
        for path in old:
            if path.name not in named:
                path.unlink(missing_ok=True)

    # -- reading (inference, a restarting learner) -------------------------------------------------

    def highest_version(self) -> int:
        """The highest version whose metadata file is in the directory (0 when none), whatever
        `latest.json` says: a publisher must continue above it, or readers that already loaded it
        (versions never go backwards for them) would ignore everything it publishes."""
        versions = [
            int(match.group(1))
            for path in self.directory.glob("v*.json")
            if (match := re.match(r"^v(\d{9})\.json$", path.name))
        ]
        return max(versions, default=0)

    def latest(self) -> Checkpoint | None:
        """The newest published checkpoint, or None when nothing was published yet."""
        path = self.directory / LATEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e}") from e
        return self._parse_metadata(raw, path)

    def _parse_metadata(self, raw: bytes, path: Path) -> Checkpoint:
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an rtrl checkpoint (expected format {FORMAT!r})")
        version = meta.get("version")
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{path} names an invalid version {version!r}")
        files = meta.get("files")
        if not isinstance(files, dict) or "weights" not in files:
            raise CheckpointError(f"{path} does not name a weights file")
        for role, entry in files.items():
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not _FILE_NAME.match(name):
                raise CheckpointError(f"{path} names {role} file {name!r}, which is not a checkpoint file name")
        return Checkpoint(version, meta)

    def _read_verified(self, checkpoint: Checkpoint, role: str) -> dict[str, torch.Tensor]:
        entry = checkpoint.metadata["files"].get(role)
        if entry is None:
            raise CheckpointError(f"checkpoint {checkpoint.version} has no {role} file")
        path = self.directory / entry["name"]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read {path} of checkpoint {checkpoint.version}: {e}") from e
        if _sha256(data) != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match the SHA-256 in its metadata; it is corrupt or partial")
        try:
            return load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e

    def load_weights(self, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
        return self._read_verified(checkpoint, "weights")

    def load_learner_state(self, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
        return self._read_verified(checkpoint, "learner_state")


class CheckpointWatcher:
    """Polls the store for a newer version and hands it to `on_checkpoint` on a background thread.

    `on_checkpoint(checkpoint, weights)` runs off the request path; a version that fails to load is
    counted and skipped, and the previously loaded version keeps serving. Versions never go backwards.

    With `load_spread_s`, the background thread waits a random time up to that long between seeing a
    new version and loading it. Every replica of a pool sees a publication within one poll, and
    loading takes CPU (reading, building, a first forward pass: 10-40 ms each on 2 cores); on a machine
    shared with the gateway, all of them loading at once delayed replies by 2-3 frames and left
    frames without an action (bench/staggering.py, 8-frame inference with 9 replicas). Spread out,
    the same work does not pile up. A version published meanwhile is loaded at the same due time.
    """

    def __init__(
        self,
        store: CheckpointStore,
        on_checkpoint: Callable[[Checkpoint, dict[str, torch.Tensor]], None],
        poll_interval_s: float = 0.1,
        load_spread_s: float = 0.0,
        rng: random.Random | None = None,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.on_checkpoint = on_checkpoint
        self.poll_interval_s = poll_interval_s
        self.load_spread_s = load_spread_s
        self._rng = rng or random.Random()
        self._now_s = now_s
        self._load_at_s: float | None = None
        """When the newer version seen by a spread poll is due to be loaded (None: none is waiting)."""
        self.loaded_version = 0
        self.loads = 0
        self.failures = 0
        self.last_error = ""
        self._failed_versions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll_once(self, spread: bool = False) -> bool:
        """Loads a newer checkpoint if there is one (with `spread`, once its random wait is over); True when
        one was loaded."""
        checkpoint: Checkpoint | None = None
        try:
            checkpoint = self.store.latest()
            if checkpoint is None or checkpoint.version <= self.loaded_version:
                return False
            if checkpoint.version in self._failed_versions:
                return False
            if spread and self.load_spread_s > 0:
                now_s = self._now_s()
                if self._load_at_s is None:
                    self._load_at_s = now_s + self._rng.uniform(0.0, self.load_spread_s)
                if now_s < self._load_at_s:
                    return False
            self._load_at_s = None
            weights = self.store.load_weights(checkpoint)
            self.on_checkpoint(checkpoint, weights)
        except CheckpointError as e:
            if checkpoint is not None:
                self._failed_versions.add(checkpoint.version)
            elif str(e) == self.last_error:
                # The same unreadable latest.json as at the last poll: one failure, not one per poll.
                return False
            self.failures += 1
            self.last_error = str(e)
            log.warning("checkpoint not loaded, previous version keeps serving: %s", e)
            return False
        self.loaded_version = checkpoint.version
        self.loads += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.poll_once(spread=True)
