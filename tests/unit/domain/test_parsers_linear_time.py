"""Tenant text is parsed in time linear in its length (Tenant-proof finding 2).

Each parser below runs on text a tenant sends (resource URL templates, date formats, field
paths, zone names, callback URLs) inside the API's event loop, or on record values the
tenant's own provider account returns inside a shared poll worker. The probe found
``"/c?x=" + "${" * 30000`` (60 KB) blocking the loop for ~6 s, and 20,000 colons after
``${dateTimeZone:`` for 1.9 s: quadratic scans. Hypothesis builds the same kind of input from
runs of the characters those parsers branch on, up to ~64 KB (four times the request body
limit would be needed to go further), and each call must finish within :data:`BUDGET_S`.

Why a time bound is not flaky here: a linear parser does one such input in well under a
millisecond; a quadratic one needs tens of seconds (52 s for the probe's input on this
code before the fix). The bound sits two orders of magnitude from either side, and it is
measured in CPU time of this thread (``time.thread_time``), which other processes loading
the machine do not inflate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.domain.dateformats import DateFormatError, compile_format
from app.domain.fieldpath import compile_path
from app.domain.instanceconfig import FieldError, check_callback_url
from app.domain.pollconfig import ConfigError, parse_poller_configuration
from app.domain.templates import TemplateError, compile_template, normalize_resource_url
from app.domain.timezones import UnknownTimeZoneError, resolve_timezone

BUDGET_S = 1.0
MAX_TEXT = 64 * 1024

# Every call is measured uncached: the caches would otherwise answer a repeated input.
_compile_template = compile_template.__wrapped__
_compile_format = compile_format.__wrapped__
_compile_path = compile_path.__wrapped__
_resolve_timezone = resolve_timezone.__wrapped__

# What the parsers branch on: template delimiters, zone/format separators, quotes, CEQL
# operators and separators, percent-escapes, dots, slashes, pattern letters, digits.
TOKENS = [
    "${",
    "}",
    ":",
    "'",
    "''",
    "+",
    " ",
    ">",
    "=",
    "&",
    "?",
    "%",
    "%2e",
    "%25",
    ".",
    "..",
    "/",
    "\\",
    "[",
    "]",
    "[0]",
    "a",
    "0",
    "zE",
    "Z",
    "X",
    "GMT",
    "since>",
    "where=since>",
    "${dateTimeZone:",
    "${gmtDate:",
    "dateTimeZone:",
    "-08:00:",
]
PREFIXES = ["", "/c?x=", "/c?where=since>", "/c?where=since>'", "/c?x=${dateTimeZone:", "/c/"]


@st.composite
def adversarial(draw: st.DrawFn, prefixes: list[str] = PREFIXES) -> str:
    """A prefix and a few long runs of one token each, up to ``MAX_TEXT`` characters."""
    runs = draw(
        st.lists(
            st.tuples(st.sampled_from(TOKENS), st.integers(min_value=1, max_value=MAX_TEXT)),
            min_size=1,
            max_size=4,
        )
    )
    text = draw(st.sampled_from(prefixes)) + "".join(token * count for token, count in runs)
    return text[:MAX_TEXT]


def within_budget(call: Callable[[str], Any], text: str, *errors: type[Exception]) -> None:
    started = time.thread_time()
    try:
        call(text)
    except errors:
        pass
    spent = time.thread_time() - started
    assert spent < BUDGET_S, f"{spent:.2f} s of CPU for {len(text)} characters ({text[:60]!r}...)"


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(adversarial())
@example("/c?x=" + "${" * 30_000)  # the probe's input
@example("/c?x=${dateTimeZone:" + ":" * 20_000 + "}")  # the probe's second input
@example("/c?where=since>" + "+" * 30_000 + "'")  # CEQL separators vs a bare operand
@example("/c?x=" + "${" * 1000)  # within the length bound
@example("/c?x=${dateTimeZone:" + ":" * 2000 + "}")
def test_compile_template_is_linear(text: str) -> None:
    within_budget(_compile_template, text, TemplateError)


@PROPERTY
@given(adversarial())
@example("/c/" + "%2e" * 20_000)
def test_normalize_resource_url_is_linear(text: str) -> None:
    within_budget(normalize_resource_url, text, TemplateError)


@PROPERTY
@given(adversarial(prefixes=["", "yyyy", "yyyy'", "''"]))
@example("yyyy" + "-" * 60_000)  # literals were joined with str +=: quadratic copying
@example("yyyy" + "'x'" * 20_000)
def test_compile_format_is_linear(text: str) -> None:
    within_budget(_compile_format, text, DateFormatError)


@PROPERTY
@given(adversarial(prefixes=["", "$.", "a."]))
def test_compile_path_is_linear(text: str) -> None:
    within_budget(_compile_path, text, ValueError)


@PROPERTY
@given(adversarial(prefixes=["", "GMT", "UTC+", "America/"]))
def test_resolve_timezone_is_linear(text: str) -> None:
    within_budget(_resolve_timezone, text, UnknownTimeZoneError)


@PROPERTY
@given(adversarial(prefixes=["https://", "https://h.example/", "http://[", "https://a:"]))
def test_callback_url_check_is_linear(text: str) -> None:
    within_budget(lambda url: check_callback_url(url, "configuration.callback"), text, FieldError)


def test_overlapping_fields_cannot_stall_a_poll_worker() -> None:
    # A zone abbreviation next to a weekday name was matched with backtracking over every
    # way to split the value between them: exponential in the number of fields (before the
    # fix, 28 ms for 14 pairs, growing ~4x per two more). Such a pattern is now refused when
    # it is saved; a pattern that compiles parses without backtracking between fields.
    def compile_and_parse(value: str) -> None:
        _compile_format("zE" * 20).parse(value, UTC)

    within_budget(compile_and_parse, "GMTMon" * 20 + "!", DateFormatError)


# Patterns with the most overlap the bounds allow: two zones, text fields beside them.
OVERLAPPING = ["zEzE yyyy", "EzMMMMzEd yyyy", "XdZd yyyy", "zHHzHH yyyy", "EEEMMMMEEEMMMMd yyyy"]


@PROPERTY
@given(adversarial(prefixes=["", "Mon", "GMT", "+01", "UTC+0100"]), st.sampled_from(OVERLAPPING))
@example("GMTMon" * 10_000 + "!", "zEzE yyyy")
@example("UTC+0100" * 8_000 + "!", "zHHzHH yyyy")
def test_parsing_a_record_value_is_linear(value: str, pattern: str) -> None:
    date_format = compile_format(pattern)
    within_budget(lambda text: date_format.parse(text, UTC), value, DateFormatError)


@PROPERTY
@given(adversarial(prefixes=["", "/c?x=", "yyyy"]), st.sampled_from(["url", "idField", "fmt"]))
def test_a_whole_configuration_is_checked_in_linear_time(text: str, where: str) -> None:
    resource: dict[str, Any] = {"url": "/contacts", "idField": "id"}
    if where == "fmt":
        resource["datesConfiguration"] = {"updatedDateField": "u", "updatedDateFormat": text}
    else:
        resource[where] = text
    within_budget(
        lambda _text: parse_poller_configuration({"contacts": resource}), text, ConfigError
    )
