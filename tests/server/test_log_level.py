"""The log level changes while the process runs (SIGHUP): loggers are cached on first use, so
the level is applied by a processor every logger shares (server/http/log.py ``_level_gate``)."""

from __future__ import annotations

import logging

import pytest
import structlog

from server.http import log


def test_a_level_change_reaches_loggers_already_used(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure_logging("info", "console")
    logger = structlog.get_logger("authmount.test")
    logger.debug("hidden_before")
    logger.info("shown_at_info")  # the logger is cached from here on
    log.set_log_level("debug")
    logger.debug("shown_at_debug")
    assert logging.getLogger().level == logging.WARNING  # aiohttp's own messages stay at warning
    log.set_log_level("error")
    logger.warning("hidden_at_error")
    logger.error("shown_at_error")
    err = capsys.readouterr().err
    assert "shown_at_info" in err and "shown_at_debug" in err and "shown_at_error" in err
    assert "hidden_before" not in err and "hidden_at_error" not in err
    assert log._request_sink is None  # console: request lines go through structlog


def test_json_request_lines_follow_the_level() -> None:
    log.configure_logging("warning", "json")
    assert log._request_sink is None  # request lines are info: not written at warning
    log.set_log_level("info")
    assert log._request_sink is not None


def test_lines_logged_in_a_request_carry_its_id(capsys: pytest.CaptureFixture[str]) -> None:
    """The configured chain adds the id of the request being handled (``handled`` sets it)."""
    log.configure_logging("info", "console")
    logger = structlog.get_logger("authmount.test")
    token = log._REQUEST_ID.set("rid-0123")
    try:
        logger.info("inside_a_request")
    finally:
        log._REQUEST_ID.reset(token)
    logger.info("outside_any_request")
    lines = capsys.readouterr().err.splitlines()
    assert [("request_id=rid-0123" in line) for line in lines] == [True, False]


def test_no_request_line_work_above_info() -> None:
    """Above info (and in the console format) the request line is not built at all: before,
    structlog's chain built it and dropped it in ``_level_gate``, which cost as much as
    writing it."""

    class Untouchable:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"request.{name} read for a line that is not logged")

    log.configure_logging("warning", "console")
    log._log_request(Untouchable(), "rid", 200, 0.0)  # type: ignore[arg-type]
    log.configure_logging("warning", "json")
    log._log_request(Untouchable(), "rid", 200, 0.0)  # type: ignore[arg-type]


def test_the_console_format_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """A caller's path or role name with an escape sequence reached the terminal as it was
    (the console renderer writes a value without spaces unquoted); the JSON format escaped it."""
    log.configure_logging("info", "console")
    structlog.get_logger("authmount.test").info("request", path="/v1/auth/\x1b[2Jx\x07", role="a\x00b")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\x00" not in err
    assert "path=/v1/auth/\\x1b[2Jx\\x07" in err and "role=a\\x00b" in err


def test_a_logger_set_by_name_logs_at_its_own_level(capsys: pytest.CaptureFixture[str]) -> None:
    """``sys/loggers/<name>``: one logger below the others' level, another above it; a level
    for every logger (SIGHUP's) forgets them."""
    log.configure_logging("info", "console")
    keyring, audit, other = (structlog.get_logger(n) for n in ("authmount.keyring", "authmount.audit", "authmount.x"))
    log.set_logger_levels(logging.INFO, {"authmount.keyring": logging.DEBUG, "authmount.audit": logging.ERROR})
    keyring.debug("keyring_debug_shown")
    other.debug("other_debug_hidden")
    other.info("other_info_shown")
    audit.warning("audit_warning_hidden")
    audit.error("audit_error_shown")
    assert log.logger_levels() == (logging.INFO, {"authmount.keyring": logging.DEBUG,
                                                  "authmount.audit": logging.ERROR}, frozenset())
    log.set_log_level("info")
    keyring.debug("keyring_debug_hidden_again")
    audit.warning("audit_warning_shown_again")
    err = capsys.readouterr().err
    for shown in ("keyring_debug_shown", "other_info_shown", "audit_error_shown", "audit_warning_shown_again"):
        assert shown in err
    for hidden in ("other_debug_hidden", "audit_warning_hidden", "keyring_debug_hidden_again"):
        assert hidden not in err
    assert log.logger_levels() == (logging.INFO, {}, frozenset())


def test_the_request_lines_follow_their_own_loggers_level() -> None:
    log.configure_logging("info", "json")
    log.set_logger_levels(logging.INFO, {"authmount.request": logging.WARNING})
    assert log._request_sink is None and log._request_level == logging.WARNING
    log.set_logger_levels(logging.ERROR, {"authmount.request": logging.INFO})
    assert log._request_sink is not None  # every other logger at error, the request lines still written
