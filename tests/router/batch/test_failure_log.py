"""The retrying loops' log: a failure once while it lasts (its trace the first time), again when it
changes, and one line when the loop works again."""

from __future__ import annotations

import logging

from router.batch.failure_log import RepeatedFailureLog


def test_a_lasting_failure_is_logged_once_and_its_end_once(caplog):
    log = RepeatedFailureLog(logging.getLogger("tests.failure_log"), "claiming batch lines", 0.2)
    with caplog.at_level(logging.INFO, logger="tests.failure_log"):
        for _ in range(3):
            log.failed(ConnectionError("store down"))
        log.failed(ConnectionError("store still down, another way"))
        log.succeeded()
        log.succeeded()
    records = [(record.levelname, record.getMessage(), record.exc_info is not None) for record in caplog.records]
    assert records == [
        ("ERROR", "claiming batch lines failed (trying again every 0.2 s): store down", True),
        ("ERROR", "claiming batch lines failed (trying again every 0.2 s): store still down, another way", False),
        ("INFO", "claiming batch lines works again", False),
    ]
