"""Topic names and partition counts, derived from :class:`~streams.settings.StreamSettings`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.exceptions import StreamSettingsError
from streams.settings import StreamSettings

# Kafka's legal topic characters; a filter name is already [a-z0-9_], so this only guards the prefix.
_LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
ALL_SCORES = "all"
FEEDBACK_BASE = "feedback"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int


@dataclass(frozen=True)
class Topics:
    prefix: str
    raw: TopicSpec
    screened: TopicSpec
    escalated: TopicSpec
    dlq: TopicSpec
    scores_base: str
    scores_partitions: int
    shadow: TopicSpec
    drift: TopicSpec
    alerts: TopicSpec
    # Per-filter topics of active learning: ``<base>.<filter>``, as the score topics are.
    active_learning_base: str = "active-learning"
    labels_base: str = "labels"
    queue_partitions: int = 4
    # Engagement and corrections that downstream consumers publish about scored articles ([evolve]).
    feedback_base: str = "feedback"

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> Topics:
        p, parts = settings.topic_prefix, settings.partitions

        def spec(name: str, key: str) -> TopicSpec:
            return TopicSpec(_checked(p + name), parts[key])

        topics = cls(prefix=p, raw=spec(settings.topic_raw, "raw"), screened=spec(settings.topic_screened, "screened"),
                     escalated=spec(settings.topic_escalated, "escalated"), dlq=spec(settings.topic_dlq, "dlq"),
                     scores_base=_checked(p + settings.topic_scores), scores_partitions=parts["scores"],
                     shadow=spec(settings.topic_shadow, "scores"), drift=spec(settings.topic_drift, "scores"),
                     alerts=spec(settings.topic_alerts, "scores"),
                     active_learning_base=_checked(p + settings.topic_active_learning),
                     labels_base=_checked(p + settings.topic_labels), queue_partitions=settings.default_partitions,
                     feedback_base=_checked(p + FEEDBACK_BASE))
        names = [t.name for t in (topics.raw, topics.screened, topics.escalated, topics.dlq, topics.shadow,
                                  topics.drift, topics.alerts)]
        if len(set(names)) != len(names):
            raise StreamSettingsError(f"two stream topics have the same name: {names}")
        # Per-filter families must not share a base either: labels.<f> would be scores.<f>.
        bases = [topics.scores_base, topics.active_learning_base, topics.labels_base, topics.feedback_base]
        if len(set(bases)) != len(bases):
            raise StreamSettingsError(f"two per-filter topic families have the same base name: {bases}")
        return topics

    def scores(self, filter_name: str) -> TopicSpec:
        """``<prefix>scores.<filter>``; the filter ``all`` is reserved for the combined topic."""
        if filter_name == ALL_SCORES:
            raise StreamSettingsError(f"a filter may not be named {ALL_SCORES!r}: it is the combined score topic")
        return TopicSpec(_checked(f"{self.scores_base}.{filter_name}"), self.scores_partitions)

    @property
    def all_scores(self) -> TopicSpec:
        return TopicSpec(f"{self.scores_base}.{ALL_SCORES}", self.scores_partitions)

    def active_learning(self, filter_name: str) -> TopicSpec:
        """``<prefix>active-learning.<filter>``: the labelling queue of one filter (keyed by article id)."""
        return TopicSpec(_checked(f"{self.active_learning_base}.{filter_name}"), self.queue_partitions)

    def labels(self, filter_name: str) -> TopicSpec:
        """``<prefix>labels.<filter>``: the oracle's labels and rejections for one filter (keyed by article id)."""
        return TopicSpec(_checked(f"{self.labels_base}.{filter_name}"), self.queue_partitions)

    def feedback(self, filter_name: str) -> TopicSpec:
        """``<prefix>feedback.<filter>``: engagement and corrections from downstream consumers (keyed by article
        id), read by the ``feedback`` role into the label store."""
        return TopicSpec(_checked(f"{self.feedback_base}.{filter_name}"), self.queue_partitions)

    def pipeline_topics(self, filters: list[str] | tuple[str, ...] = ()) -> list[TopicSpec]:
        """Every topic the pipeline roles read or write, for creating them up front."""
        return [self.raw, self.screened, self.escalated, self.dlq, self.all_scores,
                *(self.scores(f) for f in filters)]


def _checked(name: str) -> str:
    if not _LEGAL.match(name) or name in (".", ".."):
        raise StreamSettingsError(f"{name!r} is not a legal Kafka topic name (letters, digits, '.', '_', '-')",
                                  variable="FLUXSCORE_TOPIC_PREFIX")
    return name
