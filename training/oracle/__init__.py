"""Oracle labelling: score articles with an LLM over HTTP, strictly validated, resumable, costed.

Each article is sent with its filter's prompt to an OpenAI-compatible chat-completions API or to
Google's Gemini API; the answer must hold a JSON object with every dimension scored 0-10. The package
is split by job:

| module | job |
|---|---|
| :mod:`~training.oracle.settings` | :class:`OracleSettings`, read from ``FLUXSCORE_ORACLE_*`` (the table is there) |
| :mod:`~training.oracle.answers` | the JSON in an answer, validated by a pydantic model built from the dimensions |
| :mod:`~training.oracle.providers` | request and response code per API; ``Retry-After`` and ``retryDelay`` |
| :mod:`~training.oracle.generate` | :class:`ArticleGenerator`: new articles grounded on a source (augmentation) |
| :mod:`~training.oracle.labeller` | concurrency, rate limit, retries, resume, accounting; :func:`label_file` |
| :mod:`~training.oracle.errors` | :class:`OracleError` and its kinds (training errors) |
| :mod:`~training.oracle.worker_api` | :class:`Oracle`: one item at a time, for the ``oracle`` stream role |
| :mod:`~training.oracle.fake` | a fake OpenAI/Gemini API (tests, ``fluxscore demo``) |

The API key is read from the named variable when labelling starts; it is sent only in a header. It and
its URL-encoded and JSON-escaped forms are scrubbed (:mod:`scoring.redact`) from every string that
leaves the process: each labelled and rejected record whole, every progress event, the errors raised,
and every log line that passes a handler with :class:`~scoring.redact.SecretFilter` (labelling puts one
on the root logger's handlers, and keeps the HTTP libraries' loggers, whose DEBUG lines print headers,
at WARNING).

This module is the public surface; what is not listed in ``__all__`` is internal to the package.
"""

from __future__ import annotations

from training.oracle.answers import extract_json, parse_answer, validate_scores
from training.oracle.errors import OracleAnswerError, OracleConfigError, OracleError, OracleRequestError
from training.oracle.generate import (
    ArticleGenerator,
    GeneratedArticle,
    GenerationRequest,
    GenerationResult,
    build_generation_messages,
    parse_generated,
)
from training.oracle.labeller import (
    LabelEvent,
    LabelSummary,
    RateLimiter,
    build_messages,
    completed_ids,
    label_articles,
    label_file,
    read_articles,
)
from training.oracle.providers import Usage, parse_retry_after
from training.oracle.settings import OracleSettings
from training.oracle.worker_api import Oracle, OracleRejection, OracleUnavailableError

__all__ = ["ArticleGenerator", "GeneratedArticle", "GenerationRequest", "GenerationResult", "LabelEvent",
           "LabelSummary", "Oracle", "OracleAnswerError", "OracleConfigError", "OracleError", "OracleRejection",
           "OracleRequestError", "OracleSettings", "OracleUnavailableError", "RateLimiter", "Usage",
           "build_generation_messages", "build_messages", "completed_ids", "extract_json", "label_articles",
           "label_file", "parse_answer", "parse_generated", "parse_retry_after", "read_articles", "validate_scores"]
