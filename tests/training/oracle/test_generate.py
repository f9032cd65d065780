"""Article generation through the oracle client, against the fake API (mock transport and loopback)."""

from __future__ import annotations

import asyncio

import pytest

from tests.training.oracle.common import ENV, KEY, settings
from tests.training.oracle_server import MockOracle, OracleServer
from training.oracle import (
    ArticleGenerator,
    GenerationRequest,
    GenerationResult,
    OracleAnswerError,
    OracleRequestError,
    build_generation_messages,
    parse_generated,
)
from training.oracle.generate import GENERATION_MARKER, SOURCE_DELIMITER


def request(content: str = "The council opened a clinic.\n\nIt serves 400 people.", variant: int = 1,
            **kw: object) -> GenerationRequest:
    values: dict[str, object] = {"request_id": "src-1~oracle1", "source_title": "A clinic opens",
                                 "source_content": content, "language": "fr", "source_type": "rss",
                                 "source": "le_quotidien", "tier": "HIGH", "variant": variant,
                                 "filter_name": "demo", "dimensions": (("reach", "how many people"),)}
    values.update(kw)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def generate(fake: MockOracle | OracleServer, req: GenerationRequest, provider: str = "openai",
             **kw: object) -> GenerationResult:
    async def go() -> GenerationResult:
        async with ArticleGenerator(settings(fake, provider, **kw), env=ENV,
                                    transport=getattr(fake, "transport", None)) as gen:
            return await gen.generate(req)
    return asyncio.run(go())


def test_messages_carry_the_marker_the_wanted_group_and_the_cut_source() -> None:
    system, user = build_generation_messages(request(content="x" * 500), max_chars=100)
    assert system.startswith(GENERATION_MARKER)
    assert "'fr'" in system and "rss, le_quotidien" in system and "rate HIGH" in system and "- reach:" in system
    instructions, _, source = user.partition(SOURCE_DELIMITER)
    assert "variant 1" in instructions and source.startswith("A clinic opens") and len(source) == 100
    bare_system, _ = build_generation_messages(request(language=None, tier=None, source_type=None, source=None,
                                                       dimensions=()), max_chars=100)
    assert "Wanted" not in bare_system and "rates articles on" not in bare_system


def test_parse_generated_accepts_an_article_and_refuses_others() -> None:
    article = parse_generated('Sure:\n```json\n{"title": "T", "content": "Body.", "notes": "extra"}\n```')
    assert (article.title, article.content) == ("T", "Body.")
    for bad, why in (('{"title": "T"}', "content"), ('{"title": "  ", "content": "x"}', "blank"),
                     ('{"title": 3, "content": "x"}', "title"), ("no json here", "no JSON object")):
        with pytest.raises(OracleAnswerError, match=why) as info:
            parse_generated(bad)
        assert info.value.raw == bad


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_generation_is_derived_from_the_request_and_counted(provider: str) -> None:
    fake = MockOracle(KEY)
    first = generate(fake, request(), provider)
    assert first.article is not None and first.reason is None and first.attempts == 1
    assert "It serves 400 people." in first.article.content and first.article.title.startswith("Report ")
    assert first.usage.input_tokens > 0
    again = generate(fake, request(), provider)
    other = generate(fake, request(variant=2), provider)
    assert again.article == first.article and other.article is not None and other.article != first.article
    assert all(GENERATION_MARKER in str(s.body) for s in fake.seen)


def test_transient_failures_are_retried_and_bad_answers_end_as_a_reason() -> None:
    fake = MockOracle(KEY)
    retried = generate(fake, request(content="case:500_once key:a and text"))
    assert retried.article is not None and retried.attempts == 2 and len(fake.calls("a")) == 2
    bad = generate(fake, request(content="case:malformed key:b"), max_attempts=3)
    assert bad.article is None and bad.attempts == 3 and "no JSON object" in (bad.reason or "")
    refused = generate(fake, request(content="case:bad_request key:c"))
    assert refused.article is None and refused.attempts == 1 and "HTTP 400" in (refused.reason or "")


def test_a_refused_key_ends_the_run_without_printing_it() -> None:
    server = OracleServer("another-key").start()  # a real socket: the key travels in a real header
    try:
        with pytest.raises(OracleRequestError, match="HTTP 401") as info:
            generate(server, request())
    finally:
        server.stop()
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)
