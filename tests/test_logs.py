"""Log formats: text (no timestamp under the journal) and one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipedge.logs import JsonFormatter, is_journal, make_formatter, setup_logging
from sipedge.sip.address import Endpoint

ISO_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(msg: str = "call %s answered", *args: object, exc: bool = False,
           **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("sipedge.events", logging.INFO, __file__, 1, msg,
                            args or ("abc",), exc_info)
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_has_ts_level_logger_msg_and_the_fields() -> None:
    fields = {"call_id": "a84b4c76e66710", "direction": "outbound", "edge": "ashburn-ix",
              "gateway": "ashburn-ix/127.0.0.64", "code": 200, "answer_s": 1.25}
    line = JsonFormatter().format(record(fields=fields))
    assert "\n" not in line
    obj = json.loads(line)
    assert ISO_MS_UTC.fullmatch(obj.pop("ts"))
    assert obj == {"level": "INFO", "logger": "sipedge.events", "msg": "call abc answered",
                   **fields}


def test_json_fields_never_replace_the_standard_keys_and_odd_values_become_text() -> None:
    peer = Endpoint("udp", "127.0.0.1", 5060)
    obj = json.loads(JsonFormatter().format(record(fields={"msg": "x", "level": 1, "peer": peer})))
    assert obj["msg"] == "call abc answered" and obj["level"] == "INFO"
    assert obj["peer"] == str(peer)


def test_json_carries_the_traceback_as_exc_on_one_line() -> None:
    line = JsonFormatter().format(record(exc=True))
    assert "\n" not in line
    exc = json.loads(line)["exc"]
    assert exc.startswith("Traceback") and "RuntimeError: boom" in exc


def test_json_without_fields_or_exc_has_just_the_four_keys() -> None:
    assert set(json.loads(JsonFormatter().format(record()))) == {"ts", "level", "logger", "msg"}


def test_text_line_starts_with_the_time() -> None:
    line = make_formatter("text", environ={}).format(record())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO sipedge.events: call abc answered",
                        line)


def test_text_under_the_journal_drops_the_time() -> None:
    line = make_formatter("text", environ={"JOURNAL_STREAM": "8:12345"}).format(record())
    assert line == "INFO sipedge.events: call abc answered"


def test_json_keeps_ts_under_the_journal() -> None:
    formatter = make_formatter("json", environ={"JOURNAL_STREAM": "8:12345"})
    assert ISO_MS_UTC.fullmatch(json.loads(formatter.format(record()))["ts"])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_peer_control_characters_never_reach_the_line_raw(fmt: str) -> None:
    # A Call-ID from the wire with NUL, ESC (a terminal escape sequence), CR/LF (a forged
    # second line) and DEL: escaped, the line stays one printable line.
    call_id = "a\x00b\x1b[2Jc\r\nINFO sipedge: forged\x7f"
    line = make_formatter(fmt, environ={}).format(record("call %s answered", call_id))
    assert not re.search(r"[\x00-\x1f\x7f]", line), repr(line)
    if fmt == "text":
        assert line.endswith(r"call a\x00b\x1b[2Jc\x0d\x0aINFO sipedge: forged\x7f answered")
    else:
        assert json.loads(line)["msg"] == f"call {call_id} answered"


def test_text_traceback_keeps_its_lines() -> None:
    line = make_formatter("text", environ={}).format(record(exc=True))
    assert "\nTraceback (most recent call last):\n" in line and "RuntimeError: boom" in line


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        make_formatter("xml")


def test_setup_logging_writes_json_lines_to_stderr(
        root_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    setup_logging("info", "json")
    logging.getLogger("sipedge.test").debug("hidden")
    logging.getLogger("sipedge.test").warning("gateway %s down", "gw1", extra={"fields": {"gateway": "gw1"}})
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert (obj["level"], obj["logger"], obj["msg"], obj["gateway"]) == (
        "WARNING", "sipedge.test", "gateway gw1 down", "gw1")


def test_setup_logging_text_reads_journal_stream_from_the_environment(
        root_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("info")
    logging.getLogger("sipedge.test").info("ready")
    assert err.getvalue() == "INFO sipedge.test: ready\n"


def test_journal_stream_counts_only_for_the_named_file(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream, open(tmp_path / "other", "w") as other:
        info = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert is_journal(environ, stream)
        # Inherited by a process whose stderr was redirected: not the journal any more.
        assert not is_journal(environ, other)
        assert not is_journal({}, stream)
        line = make_formatter("text", environ, other).format(record())
        assert line.endswith("INFO sipedge.events: call abc answered") and line[0].isdigit()
