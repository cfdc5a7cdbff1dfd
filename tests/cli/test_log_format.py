"""The agent's log lines: its fast formatter writes what logging.Formatter would."""

from __future__ import annotations

import io
import logging
import sys

from hookvisor.cli.serve_cmd import LOG_FORMAT, LineHandler, LogFormatter


class _Reference(LogFormatter):
    format = logging.Formatter.format  # the stdlib path, control characters escaped alike


def _record(msg: str, args: tuple[object, ...], created: float) -> logging.LogRecord:
    record = logging.LogRecord("hookvisor.agent", logging.INFO, "", 0, msg, args, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_fast_format_is_the_stdlib_line() -> None:
    fast, ref = LogFormatter(), _Reference(LOG_FORMAT)
    cases = [("VM %s (%s) started%s", ("6c1f8c3e", "bench-1", "")),
             ("hook says %s", ("forged\nline\x1b[31m",)), ("plain", ())]
    # Two records of one second (the cached stamp), then the next second.
    for created in (1795320609.0004, 1795320609.9991, 1795320610.5):
        for msg, args in cases:
            assert fast.format(_record(msg, args, created)) == \
                ref.format(_record(msg, args, created))


def test_traceback_still_follows_the_line() -> None:
    fast = LogFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("hookvisor.rpc", logging.ERROR, "", 0, "failed", (),
                                   sys.exc_info())
    text = fast.format(record)
    assert text.splitlines()[0].endswith("ERROR hookvisor.rpc: failed")
    assert "ValueError: boom" in text


def test_line_handler_writes_each_record_whole() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True)
    handler = LineHandler(stream)
    handler.setFormatter(LogFormatter())
    logger = logging.getLogger("hookvisor.test.linehandler")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("one %d", 1)
        # Line-buffered: on the buffer below without any flush of ours.
        assert raw.getvalue().endswith(b"WARNING hookvisor.test.linehandler: one 1\n")
    finally:
        logger.removeHandler(handler)
