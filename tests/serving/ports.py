"""Free ports for tests that start the local stack, whose components listen on fixed offsets from a
base port."""

from __future__ import annotations

import socket


def free_port_block(span: int = 20) -> int:
    """A base port whose next `span` ports are all free."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span < 65535 and all(is_free(base + offset) for offset in range(1, span)):
            return base
    raise RuntimeError("no block of free ports found")


def is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
