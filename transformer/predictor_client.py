"""Calls to the predictor. Streams (and requests that need top logprobs) go over its generate_stream
route (server-sent events); one-shot generations go over the configured protocol: the REST
generate route for `v2`, ModelInfer for `grpc-v2`. Failures become our error types: 400 stays
400, an overloaded or unreachable predictor is 503, a timeout 504, anything else 502."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.errors import InvalidInput

from serving import tracing
from serving.errors import BadGateway, RequestTimeout, ServiceUnavailable, error_message, upstream_error
from serving.http_client import Pools, Response, UpstreamDisconnected, UpstreamUnreachable
from serving.sse import json_events
from serving.structured_outputs import STRUCTURED_OUTPUTS_FIELD

logger = logging.getLogger(__name__)

PROTOCOLS = ("v2", "grpc-v2")
CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass(slots=True)
class Generated:
    """Tokens the predictor produced since the last chunk (all of them for a one-shot call)."""

    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.token_ids and self.finish_reason is None


@dataclass(slots=True)
class PredictorSettings:
    host: str
    protocol: str = "v2"
    # Host:port of the predictor's REST server, for streams when the protocol is grpc-v2.
    rest_host: str | None = None
    use_ssl: bool = False
    timeout_seconds: float = 600.0
    retries: int = 0
    # Readiness also asks the predictor whether it is ready (KServe's --enable_predictor_health_check).
    check_ready: bool = False
    # Headers passed on to the predictor (auth and tracing), as KServe's transformer does.
    forwarded_headers: tuple[str, ...] = field(default=("authorization", "x-request-id", "x-b3-traceid"))

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"predictor protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.rest_host is None:
            self.rest_host = self.host if self.protocol == "v2" else _default_rest_host(self.host)


class PredictorClient:
    def __init__(self, model_name: str, settings: PredictorSettings) -> None:
        self.model_name = model_name
        self.settings = settings
        scheme = "https" if settings.use_ssl else "http"
        self._rest_base = f"{scheme}://{settings.rest_host}/v2/models/{model_name}"
        # Our own small client rather than aiohttp or httpx: this hop is on every request's time
        # to first token, and theirs cost a fraction of a millisecond more per request. Its
        # connections are made on first use, on the server's event loop, which they belong to.
        self._http = Pools(connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=settings.timeout_seconds)
        self._grpc: InferenceGRPCClient | None = None

    async def close(self) -> None:
        await self._http.close()
        if self._grpc is not None:
            await self._grpc.close()

    def describe(self) -> str:
        if self.settings.protocol == "v2":
            return f"v2 REST at {self.settings.host}"
        return f"v2 gRPC at {self.settings.host} (streams over REST at {self.settings.rest_host})"

    async def ready(self) -> bool:
        """Whether the predictor says it can serve this model."""
        try:
            async with await self._http.request("GET", f"{self._rest_base}/ready") as response:
                await response.read()
                return response.status == 200
        except (ConnectionError, TimeoutError):
            return False

    async def generate(self, prompt_ids: list[int], parameters: dict, headers: dict[str, str]) -> Generated:
        """One generation to the end, over the configured protocol."""
        if self.settings.protocol == "grpc-v2" and not parameters.get("top_logprobs"):
            return await self._infer_grpc(prompt_ids, parameters, headers)
        body = {"input_ids": prompt_ids, "parameters": parameters}
        async with self._translate_errors():
            async with await self._post("generate", body, headers) as response:
                content = await response.read()
        _raise_for_status(response.status, content)
        return _generated(json.loads(content))

    async def stream(self, prompt_ids: list[int], parameters: dict, headers: dict[str, str]) -> AsyncIterator[Generated]:
        """The predictor's tokens as they come, after a first item with none: the predictor
        answers a stream's head once it has admitted the request, before the first
        token, so a caller that waits for the first item knows the request was not refused
        without waiting for the prompt's prefill. Leaving the iteration early closes the
        stream's connection, which makes the predictor abort the request and free its KV
        blocks."""
        body = {"input_ids": prompt_ids, "parameters": parameters}
        async with self._translate_errors():
            async with await self._post("generate_stream", body, headers) as response:
                if response.status != 200:
                    _raise_for_status(response.status, await response.read())
                yield Generated(token_ids=[], finish_reason=None)
                async with aclosing(json_events(response.chunks())) as messages:
                    async for message in messages:
                        if "error" in message:
                            raise BadGateway(f"the predictor failed mid-stream: {message['error']}")
                        if message.get("finish_reason") is not None:
                            # Read the body's end before handing over the last event, so that the
                            # connection goes back to the pool instead of being closed.
                            await response.read()
                        yield _generated(message)

    async def _post(self, route: str, body: dict, headers: dict[str, str]) -> Response:
        """POST, retrying (--predictor_request_retries times) only when no connection could be made,
        so that a request is never sent twice."""
        content = json.dumps(body, separators=(",", ":")).encode()
        attempts_left = self.settings.retries + 1
        while True:
            attempts_left -= 1
            try:
                return await self._http.request("POST", f"{self._rest_base}/{route}", content, self._pass_on(headers))
            except UpstreamUnreachable:
                if not attempts_left:
                    raise

    async def _infer_grpc(self, prompt_ids: list[int], parameters: dict, headers: dict[str, str]) -> Generated:
        tensor = InferInput("input_ids", [1, len(prompt_ids)], "INT64")
        tensor.set_data_from_numpy(np.array([prompt_ids], dtype=np.int64))
        # KServe's gRPC parameters hold bool, int64 or string: floats travel as strings.
        grpc_parameters = {key: _grpc_parameter(key, value) for key, value in parameters.items()}
        request = InferRequest(model_name=self.model_name, infer_inputs=[tensor], parameters=grpc_parameters)
        if self._grpc is None:
            settings = self.settings
            self._grpc = InferenceGRPCClient(
                settings.host, use_ssl=settings.use_ssl, timeout=settings.timeout_seconds, retries=settings.retries
            )
        try:
            response = await self._grpc.infer(request, headers=tuple(self._pass_on(headers).items()))
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc, self.settings) from None
        outputs = {output.name: output for output in response.outputs}
        length = int(outputs["output_lengths"].as_numpy()[0])
        logprobs = outputs["logprobs"].as_numpy()[0][:length].tolist() if "logprobs" in outputs else None
        return Generated(
            token_ids=outputs["output_ids"].as_numpy()[0][:length].tolist(),
            finish_reason=_as_text(outputs["finish_reason"].as_numpy()[0]),
            logprobs=logprobs,
        )

    def _pass_on(self, headers: dict[str, str]) -> dict[str, str]:
        passed_on = {name: headers[name] for name in self.settings.forwarded_headers if name in headers}
        if tracing.ENABLED:
            tracing.inject(passed_on)
        return passed_on

    @asynccontextmanager
    async def _translate_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except TimeoutError:
            raise RequestTimeout.after(self.settings.timeout_seconds, "the time limit for the predictor's answer") from None
        except UpstreamDisconnected as exc:
            raise BadGateway(f"the predictor closed the connection mid-answer ({exc})") from None
        except UpstreamUnreachable as exc:
            raise ServiceUnavailable(self.model_name, f"the predictor at {self.settings.rest_host} is unreachable ({exc})") from None


def _grpc_parameter(key: str, value: object) -> object:
    """A predictor parameter as KServe's gRPC parameters hold it (bool, int64 or string), in the
    text forms the predictor reads back: floats as strings, token lists as "1,2,3", a logit
    bias as "token:bias,token:bias", the structured output as JSON text."""
    if key == STRUCTURED_OUTPUTS_FIELD:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}:{item}" for key, item in value.items())
    return value


def _generated(message: dict) -> Generated:
    top = message.get("top_logprobs")
    return Generated(
        token_ids=message["output_ids"],
        finish_reason=message.get("finish_reason"),
        logprobs=message.get("logprobs"),
        top_logprobs=[{int(token): value for token, value in row.items()} for row in top] if top else None,
    )


def _raise_for_status(status: int, content: bytes) -> None:
    if status == 200:
        return
    message = error_message(content)
    raise upstream_error("predictor", status, content[:200].decode(errors="replace") if message is None else message)


_GRPC_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _grpc_error(exc: grpc.aio.AioRpcError, settings: PredictorSettings) -> Exception:
    code, details = exc.code(), exc.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code in _GRPC_UNAVAILABLE:
        return ServiceUnavailable("predictor", f"the predictor at {settings.host} is overloaded or unreachable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RequestTimeout.after(settings.timeout_seconds, "the time limit for the predictor's answer")
    return BadGateway(f"the predictor answered {code.name}: {details}")


def _as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _default_rest_host(grpc_host: str) -> str:
    """KServe's predictor serves REST on 8080 beside gRPC on 8081."""
    hostname = grpc_host.rsplit(":", 1)[0] if ":" in grpc_host else grpc_host
    return f"{hostname}:8080"
