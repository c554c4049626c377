"""The WebSocket generate protocol on its own: client messages validated with clear errors, failures
mapped to error codes, and the per-connection session (multiplexing, cancel, duplicate ids,
limits, idle timeout, message size, authorization, draining) served by uvicorn on 127.0.0.1 in front of a
scripted backend, with the `websockets` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping

import httpx
import pytest
import websockets
from fastapi import FastAPI
from kserve.errors import InvalidInput, ModelNotFound

from serving.errors import RETRY_AFTER_SECONDS, RequestTimeout, ServiceUnavailable
from serving.openai_protocol import Usage
from serving.websocket_protocol import (
    WEBSOCKET_PATH,
    CancelMessage,
    ErrorCode,
    Finish,
    GenerateMessage,
    InvalidMessage,
    RequestFailed,
    TextDelta,
    parse_client_message,
)
from serving.websocket_session import (
    SHUTDOWN_CLOSE_REASON,
    SessionLimits,
    add_websocket_route,
    error_message,
    handshake_credentials,
)
from tests.router.graph_fakes import serve_in_thread

STEP_SECONDS = 0.02
MAX_MESSAGE_BYTES = 2000
MAX_IN_FLIGHT = 3
IDLE_TIMEOUT = 0.6
API_KEY = "sesame"
LINGER_SECONDS = 0.3


# Client messages ------------------------------------------------------------------------


def test_generate_and_cancel_messages_parse():
    generate = parse_client_message(json.dumps({"type": "generate", "id": "a", "prompt": "hi", "max_tokens": 4,
                                                "stop": "x", "seed": 3, "logprobs": True}))
    assert isinstance(generate, GenerateMessage) and generate.prompt == "hi"
    assert generate.sampling_fields() == {"max_tokens": 4, "stop": ["x"], "seed": 3, "logprobs": True}
    chat = parse_client_message(b'{"type": "generate", "id": "b", "messages": [{"role": "user", "content": "hi"}]}')
    assert chat.messages[0].text == "hi" and chat.prompt is None
    assert parse_client_message('{"type": "cancel", "id": "a"}') == CancelMessage(type="cancel", id="a")


@pytest.mark.parametrize(("raw", "request_id", "says"), [
    ("not json", None, "JSON object"),
    ("[1, 2]", None, "JSON object, got list"),
    ('{"type": "shout", "id": "a"}', "a", "unknown message type 'shout'"),
    ('{"id": "a", "prompt": "x"}', "a", "unknown message type None"),
    ('{"type": "generate", "prompt": "x"}', None, "id: Field required"),
    ('{"type": "generate", "id": "a"}', "a", "exactly one of `prompt`"),
    ('{"type": "generate", "id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "a",
     "exactly one of"),
    ('{"type": "generate", "id": "a", "prompt": "x", "max_tokens": 0}', "a", "max_tokens: Input should be"),
    ('{"type": "generate", "id": "a", "prompt": "x", "temperature": 3}', "a", "temperature"),
    ('{"type": "generate", "id": "a", "prompt": "x", "stop": ["", "y"]}', "a", "stop string"),
    ('{"type": "generate", "id": "a", "prompt": "x", "best_of": 2}', "a", "best_of: Extra"),
    ('{"type": "generate", "id": "a", "prompt": "x", "frequency_penalty": 3}', "a", "frequency_penalty: Input should"),
    ('{"type": "generate", "id": "a", "prompt": "x", "logit_bias": {"x": 1}}', "a", "logit_bias.x.[key]"),
    ('{"type": "cancel"}', None, "id: Field required"),
    ('{"type": "generate", "id": "", "prompt": "x"}', "", "id: String should have at least 1"),
])
def test_bad_messages_say_what_is_wrong(raw, request_id, says):
    with pytest.raises(InvalidMessage) as raised:
        parse_client_message(raw)
    assert raised.value.request_id == request_id
    assert says in raised.value.message


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidInput("bad"), ErrorCode.INVALID_REQUEST),
    (ModelNotFound("gpt-4"), ErrorCode.NOT_FOUND),
    (ServiceUnavailable("demo", "queue full"), ErrorCode.OVERLOADED),
    (RequestTimeout("too slow"), ErrorCode.TIMEOUT),
    (RequestFailed(502, "garbled"), ErrorCode.UPSTREAM_ERROR),
    (RequestFailed(503, "queue full"), ErrorCode.OVERLOADED),
    (KeyError("secret internals"), ErrorCode.INTERNAL),
])
def test_failures_map_to_error_codes(exc, code):
    message = error_message("a", exc)
    assert message.id == "a" and message.code is code
    assert (message.retry_after == RETRY_AFTER_SECONDS) == (code is ErrorCode.OVERLOADED)
    if code is ErrorCode.INTERNAL:
        assert message.message == "internal error (KeyError)"


# Sessions -------------------------------------------------------------------------------


class ScriptedBackend:
    """One delta per word of the prompt, STEP_SECONDS apart; a prompt "fail" is a 400; a prompt
    starting with "linger" takes LINGER_SECONDS to clean up after its Finish (as closing an
    upstream connection may). Counts the streams that were closed before their end."""

    def __init__(self) -> None:
        self.abandoned = 0
        self.headers: list[dict[str, str]] = []

    async def stream(self, request: GenerateMessage, headers: Mapping[str, str]) -> AsyncIterator[TextDelta | Finish]:
        self.headers.append(dict(headers))
        if request.prompt == "fail":
            raise InvalidInput("this prompt fails")
        words = request.prompt.split()
        finished = False
        try:
            for word in words:
                await asyncio.sleep(STEP_SECONDS)
                yield TextDelta(word + " ")
            finished = True
            yield Finish("length", "scripted", Usage.of(1, len(words)))
        finally:
            if not finished:
                self.abandoned += 1
            if words[0] == "linger":
                await asyncio.sleep(LINGER_SECONDS)


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend()


def _serve(backend: ScriptedBackend, authorize=None) -> Iterator[str]:
    app = FastAPI()
    add_websocket_route(app, backend, SessionLimits(MAX_MESSAGE_BYTES, MAX_IN_FLIGHT, IDLE_TIMEOUT), authorize)
    with serve_in_thread(app) as url:
        yield url.replace("http://", "ws://") + WEBSOCKET_PATH


@pytest.fixture(scope="module")
def url(backend) -> Iterator[str]:
    yield from _serve(backend)


@pytest.fixture(scope="module")
def guarded_url(backend) -> Iterator[str]:
    yield from _serve(backend, lambda authorization: authorization == f"Bearer {API_KEY}")


def generate(request_id: str, prompt: str) -> str:
    return json.dumps({"type": "generate", "id": request_id, "prompt": prompt})


async def until_ends(socket, request_ids: set[str]) -> list[dict]:
    """Messages received until each id got its done or error."""
    messages = []
    while request_ids:
        message = json.loads(await asyncio.wait_for(socket.recv(), 5))
        messages.append(message)
        if message["type"] in ("done", "error"):
            request_ids.discard(message["id"])
    return messages


async def test_requests_interleave_by_id(url):
    async with websockets.connect(url) as socket:
        await socket.send(generate("long", "a b c d e f"))
        await socket.send(generate("short", "x y"))
        messages = await until_ends(socket, {"long", "short"})
    texts = {request_id: "".join(m.get("text", "") for m in messages if m["id"] == request_id)
             for request_id in ("long", "short")}
    assert texts == {"long": "a b c d e f ", "short": "x y "}
    order = [message["id"] for message in messages]
    # The short request finished while the long one was still streaming.
    assert order.index("short") < order.index("long", order.index("short")) < len(order) - 1


async def test_cancel_ends_one_request_and_closes_its_stream(url, backend):
    abandoned = backend.abandoned
    async with websockets.connect(url) as socket:
        await socket.send(generate("slow", " ".join(["w"] * 200)))
        await socket.send(generate("other", "p q"))
        first = json.loads(await socket.recv())
        assert first["type"] == "delta"
        await socket.send(json.dumps({"type": "cancel", "id": "slow"}))
        messages = await until_ends(socket, {"slow", "other"})
        # A cancel for an id that is not in flight (any more) is ignored.
        await socket.send(json.dumps({"type": "cancel", "id": "slow"}))
        await socket.send(generate("after", "z"))
        after = await until_ends(socket, {"after"})
    [done] = [message for message in messages if message["id"] == "slow" and message["type"] == "done"]
    assert done == {"type": "done", "id": "slow", "finish_reason": "cancelled"}
    assert [message["type"] for message in messages if message["id"] == "other"][-1] == "done"
    assert [message["type"] for message in after] == ["delta", "done"]
    assert backend.abandoned == abandoned + 1


async def test_a_request_ends_once_when_a_cancel_races_its_finish(url):
    async with websockets.connect(url) as socket:
        await socket.send(generate("race", "linger"))
        assert json.loads(await socket.recv())["type"] == "delta"
        # The backend has its Finish by now, and is cleaning up.
        await socket.send(json.dumps({"type": "cancel", "id": "race"}))
        ended = json.loads(await socket.recv())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(socket.recv(), 2 * LINGER_SECONDS)
    assert ended == {"type": "done", "id": "race", "finish_reason": "cancelled"}


async def test_errors_answer_one_message_and_the_connection_goes_on(url):
    async with websockets.connect(url) as socket:
        await socket.send(generate("a", "x y z"))
        await socket.send(generate("a", "again"))
        await socket.send("{nope")
        await socket.send(generate("f", "fail"))
        # Request a's text may come before, between or after the errors: what matters is that
        # each error is one message and a still finishes. The duplicate's error is the first
        # a-message that is an error; a's own stream ends with done.
        messages = await until_ends(socket, {"f", None})
        if not any(message["type"] == "done" and message["id"] == "a" for message in messages):
            messages += await until_ends(socket, {"a"})
    errors = [message for message in messages if message["type"] == "error"]
    duplicate, malformed, failed = (next(error for error in errors if error["id"] == request_id)
                                    for request_id in ("a", None, "f"))
    rest = [message for message in messages if message["id"] == "a" and message["type"] != "error"]
    assert duplicate["code"] == "duplicate_id"
    assert "already in flight" in duplicate["message"]
    assert malformed["code"] == "invalid_request"
    assert failed == {"type": "error", "id": "f", "code": "invalid_request", "message": "this prompt fails"}
    assert len(errors) == 3
    assert "".join(message.get("text", "") for message in rest) == "x y z "
    assert rest[-1]["type"] == "done"


async def test_subscribe_without_background_requests_is_an_error_and_the_connection_goes_on(url):
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"type": "subscribe", "id": "bgreq_1"}))
        refused = json.loads(await socket.recv())
        await socket.send(generate("after", "x"))
        rest = await until_ends(socket, {"after"})
    assert refused["id"] == "bgreq_1" and refused["code"] == "invalid_request"
    assert "the router's WebSocket API serves `subscribe`" in refused["message"]
    assert rest[-1]["type"] == "done"


async def test_in_flight_requests_are_bounded_per_connection(url):
    async with websockets.connect(url) as socket:
        for index in range(MAX_IN_FLIGHT + 1):
            await socket.send(generate(str(index), "a b c"))
        messages = await until_ends(socket, {str(index) for index in range(MAX_IN_FLIGHT + 1)})
    refused = [message for message in messages if message["type"] == "error"]
    assert [message["id"] for message in refused] == [str(MAX_IN_FLIGHT)]
    assert refused[0]["code"] == "too_many_requests"
    assert sum(message["type"] == "done" for message in messages) == MAX_IN_FLIGHT


async def test_a_message_over_the_size_limit_closes_with_1009(url, backend):
    abandoned = backend.abandoned
    async with websockets.connect(url) as socket:
        await socket.send(generate("slow", " ".join(["w"] * 200)))
        await socket.send(generate("big", "x" * MAX_MESSAGE_BYTES))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd.code == 1009 and str(MAX_MESSAGE_BYTES) in closed.value.rcvd.reason
    # What was in flight on the connection is cancelled with it.
    await asyncio.sleep(0.2)
    assert backend.abandoned == abandoned + 1


async def test_an_idle_connection_is_closed_but_not_one_with_work_in_flight(url):
    async with websockets.connect(url) as socket:
        # Longer than the idle timeout, but in flight all along.
        await socket.send(generate("busy", " ".join(["w"] * round(1.5 * IDLE_TIMEOUT / STEP_SECONDS))))
        messages = await until_ends(socket, {"busy"})
        assert messages[-1]["type"] == "done"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5 * IDLE_TIMEOUT)
    assert closed.value.rcvd.code == 1000 and closed.value.rcvd.reason == "idle timeout"


async def test_pings_are_answered(url):
    async with websockets.connect(url) as socket:
        await asyncio.wait_for(await socket.ping(), 5)


async def test_a_bad_key_closes_with_1008(guarded_url):
    async with websockets.connect(guarded_url, additional_headers={"authorization": "Bearer wrong"}) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason
    async with websockets.connect(guarded_url, additional_headers={"authorization": f"Bearer {API_KEY}"}) as socket:
        await socket.send(generate("a", "ok"))
        assert (await until_ends(socket, {"a"}))[-1]["type"] == "done"


async def test_a_browser_sends_its_key_as_a_subprotocol(guarded_url, backend):
    """Browsers cannot set headers on a WebSocket: "bearer.<key>" offered as a subprotocol is the
    key, the handshake accepts that subprotocol (a browser fails one that accepts none), and the
    requests go upstream with the Authorization header it stands for."""
    async with websockets.connect(guarded_url, subprotocols=[f"bearer.{API_KEY}"]) as socket:
        assert socket.subprotocol == f"bearer.{API_KEY}"
        await socket.send(generate("a", "browser"))
        assert (await until_ends(socket, {"a"}))[-1]["type"] == "done"
    assert backend.headers[-1]["authorization"] == f"Bearer {API_KEY}"
    assert "sec-websocket-protocol" not in backend.headers[-1]
    async with websockets.connect(guarded_url, subprotocols=["bearer.wrong"]) as socket:
        assert socket.subprotocol == "bearer.wrong"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == 1008 and "subprotocol 'bearer.<key>'" in closed.value.rcvd.reason


def test_an_authorization_header_wins_over_a_key_subprotocol():
    assert handshake_credentials({"authorization": "Bearer a", "sec-websocket-protocol": "bearer.b"}) == (
        "Bearer a", "bearer.b")
    assert handshake_credentials({"sec-websocket-protocol": "chat, bearer.b"}) == ("Bearer b", "bearer.b")
    assert handshake_credentials({"sec-websocket-protocol": "chat"}) == (None, None)
    assert handshake_credentials({}) == (None, None)


# Draining (SIGTERM) ---------------------------------------------------------------------


@pytest.fixture
def draining_url(backend) -> Iterator[str]:
    """A server of its own (draining is for good); POST /drain starts it, POST /drained waits
    until every session has drained (as serving/shutdown.py does on SIGTERM)."""
    app = FastAPI()
    sessions = add_websocket_route(app, backend, SessionLimits(MAX_MESSAGE_BYTES, MAX_IN_FLIGHT, 60.0))

    @app.post("/drain")
    async def drain() -> None:
        sessions.start_draining()

    @app.post("/drained")
    async def drained() -> None:
        await asyncio.wait_for(sessions.drained(), 5)

    with serve_in_thread(app) as url:
        yield url


async def closed_with(socket) -> websockets.frames.Close:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(socket.recv(), 5)
    return closed.value.rcvd


async def test_draining_finishes_requests_in_flight_then_closes_with_1012(draining_url):
    ws_url = draining_url.replace("http://", "ws://") + WEBSOCKET_PATH
    async with (websockets.connect(ws_url) as busy, websockets.connect(ws_url) as idle,
                httpx.AsyncClient(base_url=draining_url) as http):
        long_words = " ".join(["w"] * 20)
        await busy.send(generate("a", long_words))
        await busy.send(generate("b", "x y z"))
        assert json.loads(await busy.recv())["type"] == "delta"
        (await http.post("/drain")).raise_for_status()
        # An idle connection closes at once, telling its client to reconnect (elsewhere).
        close = await closed_with(idle)
        assert close.code == 1012 and close.reason == SHUTDOWN_CLOSE_REASON
        # A busy one takes no new request, finishes those in flight, and closes after the last.
        await busy.send(generate("late", "p q"))
        messages = await until_ends(busy, {"a", "b", "late"})
        close = await closed_with(busy)
        (await http.post("/drained")).raise_for_status()
        # A connection opened while draining is closed at once.
        async with websockets.connect(ws_url) as late:
            assert (await closed_with(late)).code == 1012
    [refused] = [message for message in messages if message["id"] == "late"]
    assert refused["code"] == "overloaded" and refused["retry_after"] == RETRY_AFTER_SECONDS
    assert "shutting down" in refused["message"]
    texts = {request_id: "".join(m.get("text", "") for m in messages if m["id"] == request_id) for request_id in "ab"}
    # The first delta of "a" was read before draining began.
    assert texts == {"a": " ".join(["w"] * 19) + " ", "b": "x y z "}
    assert [m["type"] for m in messages if m["id"] in "ab"][-1] == "done"
    assert sum(m["type"] == "done" for m in messages) == 2
    assert close.code == 1012
