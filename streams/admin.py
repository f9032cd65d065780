"""``fluxscore topics create``: every topic a deployment uses, created before its workers start.

Workers create the topics they need on start too; this is for deployments that do it once up front
(a Kubernetes Job, the compose ``topics`` service), with the partition counts and replication factor of
the settings, so that the first worker does not race the others to create them. Safe to run again:
existing topics are left as they are.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.markup import escape

from scoring.exceptions import FluxscoreError
from scoring.package import resolve
from streams.settings import StreamSettings
from streams.topics import Topics, TopicSpec

console = Console(stderr=True)
topics_app = typer.Typer(help="Kafka topics of a deployment.", no_args_is_help=True)


def deployment_topics(settings: StreamSettings) -> list[TopicSpec]:
    """The pipeline's topics and every per-filter topic (scores, labelling queue, labels) of its filters."""
    topics = Topics.from_settings(settings)
    names = [resolve(ref).name for ref in settings.filters]
    specs = [*topics.pipeline_topics(names), topics.shadow, topics.drift, topics.alerts]
    for name in names:
        specs += [topics.active_learning(name), topics.labels(name)]
    return specs


@topics_app.command("create")
def create() -> None:
    """Create every topic of the configured filters (FLUXSCORE_FILTERS, partitions, replication)."""
    from streams.kafka import ensure_topics

    try:
        settings = StreamSettings.from_env()
        if not settings.kafka_bootstrap:
            raise FluxscoreError("set FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        specs = deployment_topics(settings)
        asyncio.run(ensure_topics(settings.kafka_bootstrap, specs, replication=settings.replication))
    except FluxscoreError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    for spec in specs:
        typer.echo(f"{spec.name}\t{spec.partitions}")
