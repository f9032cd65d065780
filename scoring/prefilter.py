"""Per-filter prefilter: the declarative rules of a package's ``prefilter`` section, compiled once.

Checks run cheapest first: source type, domain, minimum length, exclusion categories. Keywords and
patterns match by the rules of :mod:`scoring.textmatch` (whole words, scripts without spaces, case),
the engine the commerce detector shares.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from scoring.article import Article
from scoring.exceptions import PackageError
from scoring.package import ExclusionCategory, PrefilterRules
from scoring.records import PrefilterResult
from scoring.textmatch import KeywordSet, compile_regex

# A reason names a few matches, each cut short: it travels in every blocked record and log line.
_MAX_REASON_ITEMS = 5
_MAX_ITEM_CHARS = 40


def normalize_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) host from a domain, ``*.domain``, or a URL someone pasted as a domain."""
    domain = domain.strip()
    if "://" in domain:
        domain = urlsplit(domain).hostname or ""
    domain = domain.split("/", 1)[0].split(":", 1)[0].lstrip("*").strip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def url_host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url if "://" in url else "//" + url).hostname
    except ValueError:
        return None
    return normalize_domain(host) if host else None


def _short(items: Sequence[str]) -> str:
    seen: list[str] = []
    for item in items:
        item = " ".join(item.split())[:_MAX_ITEM_CHARS]
        if item not in seen:
            seen.append(item)
    more = f",+{len(seen) - _MAX_REASON_ITEMS}" if len(seen) > _MAX_REASON_ITEMS else ""
    return ",".join(seen[:_MAX_REASON_ITEMS]) + more


@dataclass(frozen=True)
class _Category:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    keywords: KeywordSet
    min_hits: int
    overrides: tuple[re.Pattern[str], ...]
    min_positive: int | None

    @classmethod
    def build(cls, cat: ExclusionCategory, case_sensitive: bool) -> _Category:
        where = f"prefilter exclusion {cat.name!r}"
        try:
            keywords = KeywordSet.build(cat.keywords, case_sensitive)
        except ValueError as exc:
            raise PackageError(f"invalid keyword in {where}: {exc}") from None
        return cls(
            name=cat.name,
            patterns=tuple(compile_regex(p, case_sensitive=case_sensitive, where=where) for p in cat.patterns),
            keywords=keywords,
            min_hits=cat.min_hits,
            overrides=tuple(compile_regex(p, case_sensitive=case_sensitive, where=f"{where} overrides")
                            for p in cat.overrides),
            min_positive=cat.min_positive,
        )


class Prefilter:
    """One filter's prefilter. Build once per package; ``check`` is pure and thread-safe."""

    def __init__(self, rules: PrefilterRules, *, filter_ref: str | None = None) -> None:
        self.rules = rules
        try:
            self._source_types = frozenset(t.strip().casefold() for t in rules.excluded_source_types)
            self._domains = frozenset(d for d in map(normalize_domain, rules.blocked_domains) if d)
            self._categories = tuple(_Category.build(c, rules.case_sensitive) for c in rules.exclusions)
            self._positives = tuple(compile_regex(p, case_sensitive=rules.case_sensitive,
                                                  where="prefilter positive_patterns")
                                    for p in rules.positive_patterns)
        except PackageError as exc:
            raise exc.with_context(filter=filter_ref) from None

    def _blocked_domain(self, host: str) -> str | None:
        labels = host.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self._domains:
                return candidate
        return None

    def check(self, article: Article, text: str) -> PrefilterResult:
        """``text`` is :func:`scoring.text.article_text` of the article (shared with later stages)."""
        if self._source_types and article.source_type:
            source_type = article.source_type.strip().casefold()
            if source_type in self._source_types:
                return PrefilterResult(passed=False, reason=f"excluded_source_type:{source_type}")
        if self._domains:
            host = url_host(article.url)
            blocked = self._blocked_domain(host) if host else None
            if blocked:
                return PrefilterResult(passed=False, reason=f"blocked_domain:{blocked}")
        if len(text) < self.rules.min_length:
            return PrefilterResult(passed=False, reason=f"too_short:{len(text)}<{self.rules.min_length}")
        if self._categories:
            reason = self._exclusion(text)
            if reason:
                return PrefilterResult(passed=False, reason=reason)
        return PrefilterResult(passed=True)

    def _exclusion(self, text: str) -> str | None:
        prepared: str | None = None
        positives: int | None = None
        for cat in self._categories:
            matched_kw: list[str] = []
            if cat.keywords.regex is not None:
                if prepared is None:
                    prepared = cat.keywords.prepare(text)
                matched_kw = cat.keywords.find(prepared)
            matched_pat = [m.group(0) for p in cat.patterns for m in p.finditer(text)]
            if len(matched_kw) + len(matched_pat) < cat.min_hits:
                continue
            if any(o.search(text) for o in cat.overrides):
                continue
            if cat.min_positive is not None:
                if positives is None:
                    positives = sum(1 for p in self._positives for _ in p.finditer(text))
                if positives >= cat.min_positive:
                    continue
            detail = []
            if matched_kw:
                detail.append(f"keywords={_short(matched_kw)}")
            if matched_pat:
                detail.append(f"patterns={_short(matched_pat)}")
            return f"excluded:{cat.name}({';'.join(detail)})"
        return None
