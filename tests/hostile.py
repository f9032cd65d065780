"""Hostile wire records for property tests: deep and wide nesting, lone surrogates, huge strings,
invisible ids, bytes that are not JSON. Shared by the validation, batch-command and agent tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# A few hundred levels: what stopped the stream (orjson encodes at most 254, Python recurses ~1000).
DEPTHS = st.sampled_from([0, 1, 31, 32, 33, 200, 254, 255, 300, 600, 900])
# Deeper than the stdlib encoder can write: built as bytes.
DEEPEST = b'{"id": "deepest", "metadata": {"k": ' + b"[" * 3000 + b"]" * 3000 + b"}}"


def nest(value: Any, depth: int, *, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


def valid_record(i: int) -> dict[str, Any]:
    # Long enough to pass the demo filters' prefilters (min_length 200), so it travels every stage.
    return {"id": f"ok-{i}", "title": "A city opens a free clinic",
            "content": "The clinic now serves 40,000 people a year, its director said on Monday. Volunteers "
                       "from three neighbourhoods staff it in the evenings, and the council has agreed to fund "
                       "a second site next spring after a survey found waiting times fell by half."}


ids = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["\u200b", " \u200b\u200d ", "\ufeff", "\u202e", "\t\n", "ok\ud800", "\udfff"]),
    st.integers(), st.none(),
)
huge = st.sampled_from([0, 10, 70_000, 850_000, 1_100_000])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["\ud800", "a\udc00b", "\ud83d\ude00"]))


@st.composite
def hostile_record(draw: st.DrawFn) -> bytes:
    """One wire record: mostly JSON objects shaped like an article, some of them hostile."""
    kind = draw(st.sampled_from(["article", "article", "article", "scalar", "garbage"]))
    if kind == "garbage":
        return draw(st.sampled_from([b"", b"{", b"\xff\xfe", b"[" * 5000, b'{"id": "x"' * 3, b"null",
                                            DEEPEST]))
    if kind == "scalar":
        return json.dumps(draw(scalars)).encode()
    record: dict[str, Any] = {"id": draw(ids), "title": draw(st.text(max_size=40)),
                              "content": "x" * draw(huge) + draw(st.text(max_size=20))}
    where = draw(st.sampled_from(["metadata", "tags", "extra", "content"]))
    depth = draw(DEPTHS)
    inner = nest(draw(scalars), depth, as_list=draw(st.booleans()))
    if where == "content":
        record["content"] = inner
    elif where == "tags":
        record["tags"] = [inner, *draw(st.lists(st.text(max_size=5), max_size=3))]
    elif where == "extra":
        record["extra"] = inner
    else:
        width = draw(st.sampled_from([0, 3, 30_000]))
        record["metadata"] = {"deep": inner, **{str(i): i for i in range(width)}}
    # ensure_ascii turns lone surrogates into \\udXXX escapes, the form that switched the JSON parser.
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
