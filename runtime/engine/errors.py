"""Errors the engine raises to its callers; each message says what was wrong and what is allowed."""


class RequestRejected(ValueError):
    """The request can never be served as asked (bad ids, too long, duplicate id, ...)."""


class QueueFull(RuntimeError):
    """The waiting queue is at max_queue_size; the caller should retry later (HTTP 503)."""


class EngineDead(RuntimeError):
    """The engine's step loop has stopped; no request can be served."""
