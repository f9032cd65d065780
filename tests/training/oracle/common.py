"""What the oracle tests share: the test key, settings for a fake API, articles that name their case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scoring.article import Article
from tests.training.oracle_server import FakeOracle
from training.oracle import OracleSettings

KEY = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "FLUXSCORE_TEST_ORACLE_KEY"
ENV = {KEY_ENV: KEY}
# Characters that URL-encoding changes, so that the encoded forms differ from the raw key.
ODD_KEY = "sk-live/AbC+def=ghi&jkl%2Fmno"
GOOD_SCORES = {"alpha": 7.0, "beta": 3.5}


def settings(fake: FakeOracle, provider: str = "openai", **kw: Any) -> OracleSettings:
    """Settings aimed at ``fake``, with waits short enough for tests (``backoff`` 10 ms)."""
    base = fake.url + ("/v1" if provider == "openai" else "")
    values: dict[str, Any] = {"provider": provider, "base_url": base, "model": "toy-model", "api_key_env": KEY_ENV,
                              "concurrency": 4, "rpm": 0, "max_attempts": 3, "timeout": 2.0, "backoff": 0.01,
                              "max_wait": 3.0, "price_input_per_m": 1.0, "price_output_per_m": 2.0}
    values.update(kw)
    return OracleSettings(**values)


def art(case: str, key: str, **kw: Any) -> Article:
    """An article whose text tells the fake API how to answer (``case``) and counts calls by ``key``."""
    return Article(id=key, title=f"Title {key}", content=f"case:{case} key:{key} and some body text.",
                   source="test", **kw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
