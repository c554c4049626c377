"""Free ports for tests that start the local stack, whose components listen on fixed offsets from a
base port."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from tests.servers import free_port

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below every OS's ephemeral range (Linux's default starts at 32768) and above well-known ports.
LOWEST_BASE = 10000


def free_port_block(span: int = 20) -> int:
    """A base port whose next `span` ports are all free.

    Picked below the OS's ephemeral port range: ports there are handed to outgoing connections
    (any client on the machine) between the moment a block is checked and the moment a server
    binds it, which made a server fail to start now and then."""
    below = ephemeral_range_start() - span
    for _ in range(200):
        base = random.randrange(LOWEST_BASE, below) if below > LOWEST_BASE else free_port()
        if base + span < 65535 and all(is_free(base + offset) for offset in range(span)):
            return base
    raise RuntimeError("no block of free ports found")


def ephemeral_range_start() -> int:
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


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
