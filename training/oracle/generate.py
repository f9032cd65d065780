"""Article generation through the oracle client: one new article per request, as JSON ``{"title", "content"}``.

Used by targeted augmentation (``mode: oracle`` of :mod:`training.evolve.initiatives.augment`). Each request
is grounded on one real source article: the model is asked to write a *new* article that reports the same
facts (a rewrite in its own words and structure, not a new story on the topic), in the wanted language,
for the wanted source kind, aimed at the wanted tier of the filter. A rewrite of the same facts was chosen
over "a new article on the same topic" because the facts are what a real collector sees; an invented
story on a topic drifts towards what the model imagines news to be. The generated text is then labelled
by the oracle on its own (``label_articles``), so its label never comes from the source.

The request goes through the same parts as labelling: :func:`~training.oracle.providers.make_provider`
(OpenAI-compatible or Gemini), the run's :class:`~training.oracle.labeller.RateLimiter`, the retry policy
of :mod:`scoring.retry` with the labeller's wait (server delay, else backoff; an invalid answer is asked
again at once), the API key from the variable the settings name, scrubbed from every reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scoring.redact import Redactor, protect_logging, register_secret
from scoring.retry import retry_bounded
from training.oracle.answers import extract_json
from training.oracle.errors import ArticleFailure, OracleAnswerError, RetryableRequest
from training.oracle.labeller import RateLimiter, _OracleWait
from training.oracle.providers import Usage, make_provider
from training.oracle.settings import OracleSettings

# In every generation system message: tells a generation request from a labelling one (the fake API
# answers an article to it) and names the job in a provider's request logs.
GENERATION_MARKER = "[fluxscore:generate-article]"
# Between the instructions and the source article in the user message.
SOURCE_DELIMITER = "\n---\nSOURCE ARTICLE:\n"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to write: grounded on one source article, for one group's language, source kind and tier."""

    request_id: str
    source_title: str
    source_content: str
    language: str | None = None
    source: str | None = None
    source_type: str | None = None
    tier: str | None = None
    variant: int = 1
    filter_name: str = ""
    dimensions: Sequence[tuple[str, str]] = ()


class GeneratedArticle(BaseModel):
    """The answer: a title and a body, both non-blank. Other keys the model adds are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str = Field(min_length=1, max_length=1000)
    content: str = Field(min_length=1)


@dataclass
class GenerationResult:
    """One request's outcome: the article, or the reason the attempts all failed."""

    request: GenerationRequest
    article: GeneratedArticle | None
    reason: str | None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0


def build_generation_messages(request: GenerationRequest, max_chars: int) -> tuple[str, str]:
    """(system, user) messages for one request; the source text is cut to ``max_chars``."""
    wanted = []
    if request.language:
        wanted.append(f"- language: write in the language with code '{request.language}'")
    if request.source_type or request.source:
        kind = ", ".join(x for x in (request.source_type, request.source) if x)
        wanted.append(f"- source kind: written as a {kind} item would be")
    if request.tier:
        wanted.append(f"- tier: an article the filter '{request.filter_name}' would rate {request.tier}")
    dims = "\n".join(f"- {name}: {description}" for name, description in request.dimensions)
    system = (f"{GENERATION_MARKER} You write realistic news articles for training a news filter. "
              "Write one new article that reports the same facts as the source article (who, what, where, "
              "the figures), in your own words and with your own structure: do not copy its sentences, do not "
              "invent facts it does not state. Answer with one JSON object and nothing else: "
              '{"title": "<headline>", "content": "<the article body, paragraphs separated by blank lines>"}.'
              + ("\nWanted:\n" + "\n".join(wanted) if wanted else "")
              + (f"\nThe filter rates articles on:\n{dims}" if dims else ""))
    text = f"{request.source_title}\n\n{request.source_content}".strip()[:max_chars]
    user = (f"Write variant {request.variant} of a rewrite of this article. Answer with the JSON object only."
            f"{SOURCE_DELIMITER}{text}")
    return system, user


def parse_generated(text: str) -> GeneratedArticle:
    """The article in an answer; :class:`OracleAnswerError` (with the raw text) when there is none."""
    obj = extract_json(text)
    try:
        article = GeneratedArticle.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise OracleAnswerError(f"invalid article: {problems}", raw=text) from None
    if not article.title.strip() or not article.content.strip():
        raise OracleAnswerError("invalid article: blank title or content", raw=text)
    return article


class ArticleGenerator:
    """Generation requests through the oracle client; ``async with ArticleGenerator(settings) as gen``.

    ``transport`` replaces the network (tests); ``env`` is where the key variable is read (default: the
    process environment). :attr:`limiter` is public so that a caller which also labels can space its
    labelling requests on the same rate.
    """

    def __init__(self, settings: OracleSettings, *, env: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        key = settings.api_key(env).get_secret_value()
        register_secret(key)
        protect_logging()
        self.redactor = Redactor([key])
        self.limiter = RateLimiter(settings.rpm)
        self.wait = _OracleWait(settings, self.limiter)
        # Redirects are not followed (httpx's default): the key must go to the configured URL only.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout), transport=transport)
        self.api = make_provider(settings, key, self.client)
        self.requests = 0
        self.usage = Usage()

    async def __aenter__(self) -> ArticleGenerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def reason(self, exc: BaseException) -> str:
        if isinstance(exc, RetryableRequest):
            return exc.reason
        if isinstance(exc, OracleAnswerError):
            return self.redactor.text(exc.message)
        return self.redactor.text(str(exc))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """One article, with the retries of the policy. Failures for this request come back as a result
        with its reason; :class:`~training.oracle.errors.OracleRequestError` (401/403/404) is raised."""
        system, user = build_generation_messages(request, self.settings.max_chars)
        result = GenerationResult(request, None, None)

        async def attempt() -> GeneratedArticle:
            result.attempts += 1
            await self.limiter.acquire()
            self.requests += 1
            reply = await self.api.send(system, user)
            result.usage = result.usage + reply.usage
            self.usage = self.usage + reply.usage
            return parse_generated(reply.text)

        try:
            result.article = await retry_bounded(
                attempt, retry_on=(RetryableRequest, OracleAnswerError),
                what=f"generation {self.redactor.text(request.request_id)}",
                max_attempts=self.settings.max_attempts, wait=self.wait, describe=self.reason)
        except (RetryableRequest, OracleAnswerError, ArticleFailure) as exc:
            result.reason = self.reason(exc)
        return result


__all__ = ["GENERATION_MARKER", "SOURCE_DELIMITER", "ArticleGenerator", "GeneratedArticle", "GenerationRequest",
           "GenerationResult", "build_generation_messages", "parse_generated"]
