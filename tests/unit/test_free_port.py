"""`free_port` chooses ports outside the kernel's ephemeral range, so that nothing bound to port 0 meanwhile
(a replica's act socket) or any outgoing connection can take a port `rtrl up` chose for a service."""

from __future__ import annotations

import socket

from rtrl.local_redis import LOWEST_CHOSEN_PORT, ephemeral_port_range, free_port, free_ports_in_a_row


def test_a_chosen_port_is_below_the_ephemeral_range_and_can_be_bound() -> None:
    low, _ = ephemeral_port_range()
    ports = {free_port() for _ in range(20)}
    assert all(LOWEST_CHOSEN_PORT <= port < low for port in ports), ports
    assert len(ports) > 1, "the ports are drawn at random, not the same one each time"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports.pop()))


def test_a_port_in_use_is_never_chosen() -> None:
    held = []
    try:
        # Hold every port of a stretch of the range, then ask many times: none of them may come back.
        for port in range(LOWEST_CHOSEN_PORT, LOWEST_CHOSEN_PORT + 200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not taken & {free_port() for _ in range(300)}
    finally:
        for s in held:
            s.close()


def test_ports_in_a_row_are_all_free() -> None:
    first = free_ports_in_a_row(3)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for offset, s in enumerate(sockets):
            s.bind(("127.0.0.1", first + offset))
    finally:
        for s in sockets:
            s.close()


def test_the_ephemeral_range_is_the_kernels() -> None:
    low, high = ephemeral_port_range()
    assert 1024 <= low < high <= 65535
    # A port the kernel picks itself lies in it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        assert low <= s.getsockname()[1] <= high
