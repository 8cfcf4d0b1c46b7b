"""Fixtures for the security tests: a throwaway PKI, and real inference replicas on port 0 whose TLS and
token settings are read from RTRL_* variables the way every service reads them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from security_pki import Pki, make_pki

from rtrl.security import SecuritySettings
from rtrl.services.inference.server import InferenceServer, create_server
from rtrl.services.inference.settings import InferenceSettings


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


MakeReplica = Callable[[Mapping[str, str]], InferenceServer]


@pytest.fixture
def make_replica(tmp_path: Path) -> Iterator[MakeReplica]:
    """Starts a real replica on 127.0.0.1 port 0 with the security settings of `env`; stops it after the test."""
    servers: list[InferenceServer] = []

    def _make(env: Mapping[str, str]) -> InferenceServer:
        settings = InferenceSettings(
            host="127.0.0.1",
            port=0,
            replica_id="secured-replica",
            checkpoint_dir=str(tmp_path / "checkpoints"),
            device="cpu",
            epsilon_start=0.0,
            workers=4,
            security=SecuritySettings.from_env(env),
        )
        server, _port = create_server(settings)
        servers.append(server)
        server.start()
        return server

    yield _make
    for server in servers:
        server.stop(0.5).wait()
