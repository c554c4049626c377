"""What the engine, SamplingParams and our pydantic models raise, as KServe's exception types
(whose status codes serving.errors and KServe's handlers map)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kserve.errors import InvalidInput
from pydantic import ValidationError

from runtime.engine import EngineDead, QueueFull, RequestRejected
from serving.errors import ServiceUnavailable, invalid_input


@contextmanager
def translate_errors(model_name: str) -> Iterator[None]:
    try:
        yield
    except (QueueFull, EngineDead) as exc:
        raise ServiceUnavailable(model_name, str(exc)) from None
    except ValidationError as exc:
        raise invalid_input(exc) from None
    except (RequestRejected, ValueError) as exc:
        raise InvalidInput(str(exc)) from None
