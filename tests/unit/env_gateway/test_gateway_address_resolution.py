"""Address resolution for inference replicas (no network: getaddrinfo is faked)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from rtrl.services.env_gateway.membership import AddressResolver, resolve


def fake_getaddrinfo(table: dict[str, list[tuple[socket.AddressFamily, str]]]) -> Callable[..., list[tuple]]:
    def getaddrinfo(host: str, port: int, type: int = 0) -> list[tuple]:
        if host not in table:
            raise socket.gaierror(f"unknown host {host}")
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port)) for family, ip in table[host]]

    return getaddrinfo


def test_a_name_resolving_to_several_containers_gives_every_address() -> None:
    table = {"inference": [(socket.AF_INET, "10.0.0.3"), (socket.AF_INET, "10.0.0.2")]}
    assert resolve("inference:50061", fake_getaddrinfo(table)) == ["10.0.0.2:50061", "10.0.0.3:50061"]


def test_ipv4_is_preferred_so_localhost_is_one_replica() -> None:
    table = {"localhost": [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")], "v6": [(socket.AF_INET6, "::1")]}
    assert resolve("localhost:1", fake_getaddrinfo(table)) == ["127.0.0.1:1"]
    assert resolve("v6:2", fake_getaddrinfo(table)) == ["[::1]:2"]


def test_resolver_picks_up_new_replicas_and_keeps_addresses_through_dns_failures() -> None:
    table = {"inference": [(socket.AF_INET, "10.0.0.2")], "other": [(socket.AF_INET, "10.0.1.1")]}
    handed: list[list[str]] = []
    resolver = AddressResolver(["inference:50061", "other:9"], handed.append, getaddrinfo=fake_getaddrinfo(table))
    assert resolver.resolve_once() == ["10.0.0.2:50061", "10.0.1.1:9"]
    table["inference"].append((socket.AF_INET, "10.0.0.3"))  # docker compose --scale inference=2
    del table["other"]  # a DNS hiccup
    assert resolver.resolve_once() == ["10.0.0.2:50061", "10.0.0.3:50061", "10.0.1.1:9"]
    assert handed[-1] == ["10.0.0.2:50061", "10.0.0.3:50061", "10.0.1.1:9"]
