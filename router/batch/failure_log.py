"""The log of a loop that retries on a timer (the worker's claims, the sweeper): a failure is
logged when it is new or differs from the last one, with its stack trace the first time, and
once when the loop works again. A store that is down would otherwise be logged at every tick."""

from __future__ import annotations

import logging


class RepeatedFailureLog:
    def __init__(self, logger: logging.Logger, what: str, retry_seconds: float) -> None:
        self.logger = logger
        self.what = what
        self.retry_seconds = retry_seconds
        self._last: str | None = None

    def failed(self, exc: Exception) -> None:
        if str(exc) != self._last:
            self.logger.error("%s failed (trying again every %g s): %s", self.what, self.retry_seconds, exc,
                              exc_info=exc if self._last is None else None)
        self._last = str(exc)

    def succeeded(self) -> None:
        if self._last is not None:
            self.logger.info("%s works again", self.what)
        self._last = None
