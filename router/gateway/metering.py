"""Token metering: a Meter counts one request's tokens as its answer flows (a whole answer's
`usage`, or a stream's continuous usage event by event, read by router/gateway/stream_usage.py),
and commits them once, to the usage ledger and to the Prometheus counters
`gateway_tokens_total{tenant, model, kind}` and `gateway_requests_total{tenant, model, outcome}`.
A stream cut short commits what it had reported."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Counter

from router.gateway.usage_record import UsageLedger, UsageRecord

GATEWAY_TOKENS = Counter("gateway_tokens", "Tokens billed by the gateway, by tenant, model and kind "
                         "(prompt, completion).", ["tenant", "model", "kind"])
GATEWAY_REQUESTS = Counter("gateway_requests", "Requests billed by the gateway, by tenant, model and outcome.",
                           ["tenant", "model", "outcome"])


class Meter:
    """One request's usage, observed as its answer flows; committed once to the ledger and the counters."""

    def __init__(self, ledger: UsageLedger, request_id: str, tenant: str, endpoint: str, model: str) -> None:
        self._ledger = ledger
        self._request_id = request_id
        self._tenant = tenant
        self._endpoint = endpoint
        self._model = model
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._record: UsageRecord | None = None
        self._write: asyncio.Future | None = None

    @property
    def request_id(self) -> str:
        """The id of the request's ledger record."""
        return self._request_id

    @property
    def committed(self) -> bool:
        return self._record is not None

    @property
    def prompt_tokens(self) -> int:
        return self._prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._completion_tokens

    @property
    def model(self) -> str:
        return self._model

    def observe(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> None:
        """The running totals so far (as OpenAI's continuous usage reports them, not increments).
        A count never decreases: a stream's last usage may leave out what an earlier one said."""
        self._prompt_tokens = max(self._prompt_tokens, prompt_tokens)
        self._completion_tokens = max(self._completion_tokens, completion_tokens)
        if model:
            self._model = model

    def observe_usage(self, usage: dict | None, model: str | None = None) -> None:
        """An OpenAI `usage` object ({"prompt_tokens", "completion_tokens", ...}), or None."""
        if isinstance(usage, dict):
            self.observe(_count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), model)
        elif model:
            self._model = model

    async def commit(self, outcome: str) -> UsageRecord:
        """The request's record, written to the ledger (durable on return) and counted; a later
        call returns the first one and writes nothing. The write goes on if the caller is cancelled."""
        if self._write is None:
            record = UsageRecord(self._request_id, self._tenant, self._model, self._endpoint,
                                 self._prompt_tokens, self._completion_tokens, outcome, time.time())
            self._record = record
            self._count(record)
            self._write = asyncio.ensure_future(self._ledger.append(record))
        await asyncio.shield(self._write)
        return self._record

    @staticmethod
    def _count(record: UsageRecord) -> None:
        GATEWAY_TOKENS.labels(record.tenant, record.model, "prompt").inc(record.prompt_tokens)
        GATEWAY_TOKENS.labels(record.tenant, record.model, "completion").inc(record.completion_tokens)
        GATEWAY_REQUESTS.labels(record.tenant, record.model, record.outcome).inc()


def _count(usage: dict, name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value >= 0 else 0
