"""The JSON log line: one processor giving what structlog's four gave (issue 16), and the stamp's format."""

from __future__ import annotations

import datetime
import re
import time

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from webhook import cli

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _chain(method: str, event: dict) -> dict:
    """The processors the line had before: format_exc_info, add_log_level, TimeStamper, JSONRenderer."""
    event = structlog.processors.format_exc_info(None, method, dict(event))
    event = structlog.processors.add_log_level(None, method, event)
    event = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, method, event)
    return orjson.loads(structlog.processors.JSONRenderer(serializer=cli._dumps)(None, method, event))


@pytest.mark.parametrize("method", ["debug", "info", "warning", "warn", "error", "exception", "critical"])
def test_one_processor_gives_the_four_processors_fields(method):
    fields = {"event": "admission", "uid": "u", "latency_ms": 0.12, "reason": None, "n": 2**70}
    try:
        raise ValueError("boom")
    except ValueError:
        with_exc = {**fields, "exc_info": True}
        for event in (fields, with_exc):
            got = orjson.loads(cli._render(None, method, dict(event)))
            want = _chain(method, event)
            assert list(got) == list(want)  # the same keys in the same order
            got_stamp, want_stamp = got.pop("timestamp"), want.pop("timestamp")
            assert got == want
            assert STAMP.match(got_stamp)
            seconds = datetime.datetime.fromisoformat(got_stamp).timestamp()
            assert abs(seconds - datetime.datetime.fromisoformat(want_stamp).timestamp()) < 1


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_stamp_is_the_iso_utc_time_to_the_microsecond(at):
    for _ in range(2):  # the second time from the kept seconds part
        stamp = cli._utc_stamp(at)
        assert STAMP.match(stamp), stamp
        parsed = datetime.datetime.fromisoformat(stamp)
        assert parsed.tzinfo == datetime.UTC
        assert abs(at - parsed.timestamp()) < 2e-6
        assert stamp[:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(at)))
