"""When batch lines may start: below the process's concurrency, and while no target is busy (every
replica that takes requests has a known waiting queue at the bound); unknown load is no load, and
a target whose breakers are all open is down, not busy."""

from __future__ import annotations

from router.batch.capacity import SpareCapacity
from router.replicas import Load
from tests.router.test_replicas import refuse_connection, replica_set, set_loads


def test_lines_fill_the_free_slots_while_queues_are_short():
    replicas = replica_set()
    capacity = SpareCapacity([replicas], concurrency=4, max_waiting=2)
    assert capacity.free_slots(in_flight=0) == 4  # unknown load: no load
    set_loads(replicas, Load(1, 0.5), Load(0, 0.0), None)
    assert capacity.free_slots(in_flight=3) == 1
    assert capacity.free_slots(in_flight=4) == 0


def test_a_target_whose_every_replica_waits_at_the_bound_holds_lines_back():
    small, large = replica_set(), replica_set()
    capacity = SpareCapacity([small, large], concurrency=4, max_waiting=2)
    set_loads(large, Load(2, 0.1), Load(5, 0.1), Load(3, 0.1))
    assert capacity.free_slots(in_flight=0) == 0
    set_loads(large, Load(2, 0.1), Load(5, 0.1), Load(1, 0.1))  # one replica has room
    assert capacity.free_slots(in_flight=0) == 4


def test_replicas_held_back_by_their_breakers_do_not_count():
    replicas = replica_set()
    capacity = SpareCapacity([replicas], concurrency=4, max_waiting=2)
    set_loads(replicas, Load(9, 0.1), Load(9, 0.1), Load(0, 0.1))
    refuse_connection(replicas, 2)  # the only idle replica is down: the others are busy
    assert capacity.free_slots(in_flight=0) == 0
    for index in (0, 1):
        refuse_connection(replicas, index)  # all down: the edge falls back, nothing to wait for
    assert capacity.free_slots(in_flight=0) == 4
