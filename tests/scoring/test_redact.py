"""Scrubbing a secret, and its encodings, from strings, nested records and log records."""

from __future__ import annotations

import logging
import sys

from scoring.redact import MASK, Redactor, SecretFilter, secret_forms

KEY = "sk-live/AbC+def=ghi&jkl%2F\"q\\"


def test_forms_cover_raw_url_encoded_in_both_cases_and_json_escaped() -> None:
    forms = secret_forms(KEY)
    assert {KEY, "sk-live%2FAbC%2Bdef%3Dghi%26jkl%252F%22q%5C", "sk-live%2fAbC%2bdef%3dghi%26jkl%252F%22q%5c",
            "sk-live/AbC%2Bdef%3Dghi%26jkl%252F%22q%5C", 'sk-live/AbC+def=ghi&jkl%2F\\"q\\\\'} <= forms
    assert {"a b", "a%20b", "a+b"} <= secret_forms("a b")
    assert secret_forms("") == set()


def test_value_walks_dicts_and_lists_keys_included_and_keeps_other_leaves() -> None:
    r = Redactor([KEY])
    record = {"a": f"x{KEY}y", "n": 3, "none": None, "nested": [{"deep": (KEY, 1.5)}], KEY: True,
              "url": "https://h/?key=" + secret_forms(KEY).pop()}
    out = r.value(record)
    assert out["a"] == f"x{MASK}y" and out["n"] == 3 and out["none"] is None
    assert out["nested"] == [{"deep": [MASK, 1.5]}] and out[MASK] is True
    assert KEY not in str(out) and not any(f in str(out) for f in secret_forms(KEY))
    assert Redactor().value(record) == record  # no secret: nothing changes


def test_filter_scrubs_message_args_extra_fields_and_traceback() -> None:
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "calling %s with %r", ("https://h", KEY), exc_info)
    record.headers = {"authorization": f"Bearer {KEY}"}
    assert SecretFilter(Redactor([KEY])).filter(record) is True
    text = logging.Formatter("%(message)s %(headers)s").format(record)
    assert KEY not in text and "calling https://h with '***'" in text and "Bearer ***" in text
    assert "ValueError: bad key ***" in text
