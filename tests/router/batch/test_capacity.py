"""When batch lines may start: below the process's concurrency (a smaller one while online requests
are in flight, and until online traffic has been quiet a while), and while no target is busy
(every replica that takes requests has a known waiting queue at the bound); unknown load is no
load, and a target whose breakers are all open is down, not busy."""

from __future__ import annotations

from router.batch.capacity import (
    BATCH_LINE_SCOPE_KEY,
    OnlineTraffic,
    OnlineTrafficMiddleware,
    SpareCapacity,
)
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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_online_requests_shrink_the_lines_until_traffic_has_been_quiet():
    clock = Clock()
    online = OnlineTraffic(clock)
    capacity = SpareCapacity([replica_set()], concurrency=8, max_waiting=2, beside_online=2, quiet_seconds=1.0,
                             online=online)
    assert capacity.free_slots(in_flight=0) == 8  # no online request yet
    online.started()
    assert capacity.free_slots(in_flight=0) == 2
    assert capacity.free_slots(in_flight=5) == 0  # lines already running finish; none start
    online.ended()
    clock.now += 0.5
    assert capacity.free_slots(in_flight=1) == 1  # a burst's gap is no quiet
    clock.now += 0.5
    assert capacity.free_slots(in_flight=1) == 7


def test_without_a_bound_beside_online_requests_lines_fill_the_concurrency():
    online = OnlineTraffic()
    capacity = SpareCapacity([replica_set()], concurrency=4, max_waiting=2, online=online)
    online.started()
    assert capacity.free_slots(in_flight=1) == 3
    assert SpareCapacity([replica_set()], concurrency=4, max_waiting=2, beside_online=9).beside_online == 4


async def test_client_posts_count_as_online_but_batch_lines_and_the_batch_routes_do_not():
    online = OnlineTraffic()
    seen: list[int] = []

    async def app(scope, receive, send) -> None:
        seen.append(online.in_flight)

    middleware = OnlineTrafficMiddleware(app, online)
    for scope, counted in [
        (_http("POST", "/openai/v1/chat/completions"), 1),
        (_http("POST", "/v1/models/router:predict"), 1),
        (_http("GET", "/openai/v1/models"), 0),
        (_http("POST", "/openai/v1/files"), 0),
        (_http("POST", "/openai/v1/batches/batch_1/cancel"), 0),
        ({**_http("POST", "/openai/v1/completions"), BATCH_LINE_SCOPE_KEY: True}, 0),
        ({"type": "websocket", "path": "/ws/v1/generate"}, 0),
    ]:
        await middleware(scope, None, None)
        assert seen.pop() == counted, scope
        assert online.in_flight == 0


def _http(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path}
