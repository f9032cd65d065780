"""What a scoring run reports: records per filter by tier and by stage, rejects, throughput.

Shared by the batch command (:mod:`scoring.cli`) and the streaming demo (:mod:`streams.demo`), so both
print the same table; kept out of the command modules so the demo imports no command-line code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.table import Table

from scoring.records import ScoreRecord


@dataclass
class ScoreSummary:
    """Counts of one run, added record by record; :meth:`table` renders them."""

    read: int = 0
    rejected: int = 0
    records: int = 0
    tiers: Counter[tuple[str, str]] = field(default_factory=Counter)
    stages: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, record: ScoreRecord) -> None:
        self.records += 1
        self.stages[(record.filter.name, record.stage.value)] += 1
        if record.stage.value in ("stage1", "stage2"):
            self.tiers[(record.filter.name, record.tier.value)] += 1

    @property
    def commerce_blocked(self) -> int:
        """Records the commerce detector ended, over every filter (one article counts once per filter)."""
        return sum(n for (_, stage), n in self.stages.items() if stage == "commerce")

    def table(self, title: str = "fluxscore score") -> Table:
        filters = sorted({name for name, _ in self.stages})
        table = Table(title=title)
        table.add_column("filter")
        for col in ("HIGH", "MEDIUM", "LOW", "stage1", "stage2", "prefilter", "commerce"):
            table.add_column(col, justify="right")
        for name in filters:
            table.add_row(name, *(str(self.tiers[(name, t)]) for t in ("HIGH", "MEDIUM", "LOW")),
                          *(str(self.stages[(name, s)]) for s in ("stage1", "stage2", "prefilter", "commerce")))
        rate = (self.read - self.rejected) / self.seconds if self.seconds > 0 else 0.0
        table.caption = (f"{self.read} read, {self.rejected} rejected, {self.records} records "
                         f"({self.commerce_blocked} blocked as commerce), {self.seconds:.1f} s, {rate:.1f} articles/s")
        return table
