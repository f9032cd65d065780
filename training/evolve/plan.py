"""The plan of a round (``PLAN.yaml``): its budget, prices per device-hour, and ranked initiatives.

:func:`load_plan` parses the file against :class:`Plan` (frozen pydantic models, unknown keys refused);
:func:`validate_plan` then checks everything a schema cannot — the money arithmetic, the filters and data
files named, each initiative's own parameters, dependencies — and collects *every* problem into one
:class:`~training.evolve.exceptions.PlanError`, so a plan is fixed in one pass. :func:`schedule` packs the
initiatives into steps that run side by side on the devices at hand.

Paths in a plan (data files, package directories) are relative to the plan file's directory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scoring.exceptions import FluxscoreError
from scoring.package import FilterPackage, load_package, resolve
from training.evolve.exceptions import EvolveError, PlanError

KINDS = ("augment", "feedback", "curriculum", "sweep", "distill")
METRICS = ("mae", "tier_accuracy", "recall_medium_high", "articles_per_s")
# Money and device-hours must multiply out to within this share of the allocation (or 1 cent): plans are
# written by hand, so rounding is fine but "$1 for 100 GPU-hours" is not.
TOLERANCE = 0.01
MIN_TOLERANCE = 0.01


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Device(_Strict):
    count: Annotated[int, Field(ge=1, description="devices of this kind at hand (an initiative uses one)")]
    price_per_hour: Annotated[float, Field(gt=0, description="money per device-hour, in the plan's currency")]
    torch_device: str | None = Field(None, description=(
        "what torch calls it: `cpu`, `cuda` (default for every kind but `cpu`), `mps`; with several devices "
        "of a cuda kind the runner appends the index (`cuda:0`, `cuda:1`)"))

    def torch(self, kind: str, slot: int) -> str:
        base = self.torch_device or ("cpu" if kind == "cpu" else "cuda")
        return f"{base}:{slot}" if base == "cuda" and self.count > 1 else base


class HeldOut(_Strict):
    fraction: Annotated[float, Field(gt=0, lt=1, description="share of the real labelled articles held out")] = 0.2
    seed: int = Field(0, description="seed of the stable split (a hash of seed and article id)")
    min_articles: int = Field(20, ge=1, description="fewer held-out articles than this is a plan error at run time")


class Success(_Strict):
    min_lift: float = Field(0.01, description=(
        "the lift at least one of the top-ranked initiatives must reach, in its metric's own units "
        "(0.01 = one point of tier accuracy or recall; 0.01 of MAE on the 0-10 scale)"))
    top: int = Field(3, ge=1, description="how many of the best-ranked initiatives the rule looks at")


class InitiativeSpec(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="unique within the round; names its work directory and ledger lines")]
    kind: str = Field(description="augment | feedback | curriculum | sweep | distill")
    rank: Annotated[int, Field(ge=1, description="1 is the most promising; unique")]
    filter: str = Field(description="the parent package: name, name@version or a package directory")
    allocation: Annotated[float, Field(gt=0, description="money this initiative may spend")]
    device: str = Field(description="a kind under `devices`")
    hours: float | None = Field(None, gt=0, description=(
        "the device-hours the allocation is meant to buy; if given, allocation must equal hours × price"))
    depends_on: tuple[str, ...] = Field((), description="initiatives whose outcome this one starts from")
    metric: str = Field("mae", description="mae | mae:<dimension> | tier_accuracy | recall_medium_high | "
                                           "articles_per_s; judged on the held-out set")
    expected_lift: float = Field(0.0, description="the improvement expected, in the metric's units, better positive")
    data: tuple[str, ...] = Field((), description="extra labelled JSONL for this initiative only (held-out "
                                                  "articles are removed from it too)")
    params: dict[str, Any] = Field(default_factory=dict, description="the initiative kind's own parameters")

    @field_validator("depends_on", "data", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class Plan(_Strict):
    round: str = Field(min_length=1, description="the round's name, e.g. 2026-12-q1")
    currency: str = Field("USD", description="what budget, allocations and prices are in")
    budget: Annotated[float, Field(gt=0, description="the round's total; it never spends more")]
    devices: dict[str, Device] = Field(description="device kinds at hand: count and price per device-hour")
    heldout: HeldOut = Field(default_factory=HeldOut,
                             description="real articles no initiative trains on, chosen by id (default 20 %)")
    data: tuple[str, ...] = Field(description="real labelled JSONL files (oracle or human labels)")
    labels_db: str | None = Field(None, description="label store URL ([al]) for human labels and feedback")
    success: Success = Field(default_factory=Success, description="the round's success rule")
    initiatives: tuple[InitiativeSpec, ...] = Field(min_length=1, description="ranked initiatives")

    @field_validator("data", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    def by_name(self) -> dict[str, InitiativeSpec]:
        return {i.name: i for i in self.initiatives}


def money(value: float, currency: str = "USD") -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    text = f"{value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc) or "plan"


def load_plan(path: Path) -> Plan:
    """Parse a plan file; schema problems are all listed in one PlanError naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError([f"cannot read the plan: {exc.strerror or exc}"], path=str(path)) from None
    except yaml.YAMLError as exc:
        raise PlanError([f"not YAML: {exc}"], path=str(path)) from None
    if not isinstance(raw, dict):
        raise PlanError(["the plan must be a mapping (round, budget, devices, heldout, data, initiatives)"],
                        path=str(path))
    try:
        return Plan.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "initiatives" and isinstance(loc[1], int):
                items = raw.get("initiatives") or []
                item = items[loc[1]] if loc[1] < len(items) else None
                if isinstance(item, dict) and item.get("name"):
                    loc[1] = item["name"]
            problems.append(f"{_location(loc)}: {err['msg']}")
        raise PlanError(problems, path=str(path)) from None


def resolve_path(base: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (base / p)


def resolve_filter(ref: str, base: Path, roots: Sequence[Path] | None = None) -> FilterPackage:
    """A package directory relative to the plan, or a name[@version] in the package search roots."""
    local = resolve_path(base, ref)
    if local.exists():
        return load_package(local)
    return resolve(ref, roots)


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in deps.get(node, ()):
            if nxt not in deps:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state and (found := visit(node)):
            return found
    return None


@dataclass
class Checked:
    """A valid plan with what validation resolved: packages by initiative, data files, the schedule."""

    plan: Plan
    base: Path
    packages: dict[str, FilterPackage]
    data: list[Path]
    extra_data: dict[str, list[Path]]
    steps: list[Step] = field(default_factory=list)

    def spec(self, name: str) -> InitiativeSpec:
        return self.plan.by_name()[name]


def _metric_problem(metric: str, package: FilterPackage | None) -> str | None:
    name, _, dim = metric.partition(":")
    if name not in METRICS or (dim and name != "mae"):
        return f"unknown metric {metric!r} (mae, mae:<dimension>, tier_accuracy, recall_medium_high, articles_per_s)"
    if dim and package is not None and dim not in package.config.dimension_names:
        return (f"metric {metric!r}: {package.ref} has no dimension {dim!r} "
                f"(has: {', '.join(package.config.dimension_names)})")
    return None


def validate_plan(plan: Plan, base: Path, *, params: Mapping[str, type[BaseModel]] | None = None,
                  roots: Sequence[Path] | None = None, path: str | None = None) -> Checked:
    """Check what the schema cannot; raise one PlanError listing every problem, or return the checked plan.

    ``params`` maps each initiative kind to its ``Params`` model (default: the registered initiatives')."""
    if params is None:
        params = registered_params()
    problems: list[str] = []
    cur = plan.currency
    total = sum(i.allocation for i in plan.initiatives)
    if total > plan.budget * (1 + 1e-9):
        problems.append("allocations exceed the budget: "
                        + " + ".join(money(i.allocation, cur) for i in plan.initiatives)
                        + f" = {money(total, cur)} > {money(plan.budget, cur)}")
    names = [i.name for i in plan.initiatives]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"initiative names used twice: {', '.join(dupes)}")
    ranks = [i.rank for i in plan.initiatives]
    dup_ranks = sorted({r for r in ranks if ranks.count(r) > 1})
    if dup_ranks:
        problems.append("ranks not unique: " + "; ".join(
            f"rank {r}: {', '.join(i.name for i in plan.initiatives if i.rank == r)}" for r in dup_ranks))
    data: list[Path] = []
    for raw in plan.data:
        p = resolve_path(base, raw)
        if not p.is_file():
            problems.append(f"data file {raw} not found ({p})")
        data.append(p)
    packages: dict[str, FilterPackage] = {}
    extra: dict[str, list[Path]] = {}
    known = set(names)
    for spec in plan.initiatives:
        where = f"initiative {spec.name!r}"
        device = plan.devices.get(spec.device)
        if device is None:
            problems.append(f"{where}: unknown device kind {spec.device!r} (at hand: "
                            f"{', '.join(plan.devices) or 'none'})")
        elif spec.hours is not None:
            cost = spec.hours * device.price_per_hour
            if not math.isclose(cost, spec.allocation, rel_tol=TOLERANCE, abs_tol=MIN_TOLERANCE):
                problems.append(f"{where}: allocation and hours do not multiply out: {money(spec.allocation, cur)}"
                                f" ≠ {spec.hours:g} h × {money(device.price_per_hour, cur)}/h = {money(cost, cur)}")
        try:
            packages[spec.name] = resolve_filter(spec.filter, base, roots)
        except FluxscoreError as exc:
            problems.append(f"{where}: unknown filter {spec.filter!r}: {exc}")
        problem = _metric_problem(spec.metric, packages.get(spec.name))
        if problem:
            problems.append(f"{where}: {problem}")
        if spec.kind not in params:
            problems.append(f"{where}: unknown kind {spec.kind!r} (known: {', '.join(sorted(params)) or 'none'})")
        else:
            try:
                params[spec.kind].model_validate(spec.params)
            except ValidationError as exc:
                for err in exc.errors():
                    problems.append(f"{where}: params.{_location(err['loc'])}: {err['msg']}")
        extra[spec.name] = []
        for raw in spec.data:
            p = resolve_path(base, raw)
            if not p.is_file():
                problems.append(f"{where}: data file {raw} not found ({p})")
            extra[spec.name].append(p)
        for dep in spec.depends_on:
            if dep == spec.name:
                problems.append(f"{where}: depends on itself")
            elif dep not in known:
                problems.append(f"{where}: depends on unknown initiative {dep!r}")
    graph: dict[str, list[str]] = {}
    for i in plan.initiatives:  # a name used twice: both entries' dependencies count
        graph.setdefault(i.name, []).extend(d for d in i.depends_on if d != i.name)
    cycle = find_cycle(graph)
    if cycle:
        problems.append("dependency cycle: " + " → ".join(cycle))
    if problems:
        raise PlanError(problems, path=path)
    checked = Checked(plan=plan, base=base, packages=packages, data=data, extra_data=extra)
    checked.steps = schedule(plan)
    return checked


def check_file(path: Path, *, params: Mapping[str, type[BaseModel]] | None = None,
               roots: Sequence[Path] | None = None) -> Checked:
    """Load and validate a plan file (paths in it relative to its directory)."""
    path = Path(path)
    plan = load_plan(path)
    return validate_plan(plan, path.resolve().parent, params=params, roots=roots, path=str(path))


def registered_params() -> Mapping[str, type[BaseModel]]:
    """The Params model of every registered initiative kind (imported when first needed: the initiatives
    pull in torch, peft and optuna, which planning a round does not need otherwise)."""
    return dict(_registry("INITIATIVES_PARAMS"))


def _registry(name: str) -> Any:
    import importlib

    module = importlib.import_module("training.evolve.initiatives")
    try:
        return vars(module)[name]
    except KeyError:
        raise EvolveError(f"training.evolve.initiatives defines no {name} yet: no initiative is registered") from None


# -- schedule -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    initiative: str
    device: str        # the kind
    index: int         # which device of the kind (0 … count-1)


@dataclass(frozen=True)
class Step:
    """Initiatives that run side by side: their dependencies are met by earlier steps, and each has a
    device of its kind to itself."""

    wave: int          # dependency level (0: depends on nothing)
    slots: tuple[Slot, ...]

    @property
    def names(self) -> list[str]:
        return [s.initiative for s in self.slots]


def waves(plan: Plan) -> list[list[InitiativeSpec]]:
    """Dependency levels, by rank within each: level n depends only on levels < n (plan must be acyclic)."""
    specs = plan.by_name()
    level: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in level:
            deps = [d for d in specs[name].depends_on if d in specs]
            level[name] = 1 + max((depth(d) for d in deps), default=-1)
        return level[name]

    for name in specs:
        depth(name)
    out: list[list[InitiativeSpec]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name, lvl in level.items():
        out[lvl].append(specs[name])
    return [sorted(w, key=lambda s: s.rank) for w in out]


def schedule(plan: Plan) -> list[Step]:
    """Pack the initiatives onto the devices at hand, step by step: each step takes, best rank first, the
    initiatives whose dependencies finished in earlier steps, one device of its kind each; those that find
    their kind's devices all taken wait for the next step. ``wave`` is the step's dependency level."""
    level = {spec.name: n for n, wave in enumerate(waves(plan)) for spec in wave}
    names = set(level)
    done: set[str] = set()
    pending = sorted(plan.initiatives, key=lambda s: s.rank)
    steps: list[Step] = []
    while pending:
        ready = [s for s in pending if all(d in done or d not in names for d in s.depends_on)]
        if not ready:  # a cycle; validate_plan reports it
            break
        used: dict[str, int] = {}
        slots: list[Slot] = []
        for spec in ready:
            count = plan.devices[spec.device].count if spec.device in plan.devices else 1
            taken = used.get(spec.device, 0)
            if taken < count:
                slots.append(Slot(spec.name, spec.device, taken))
                used[spec.device] = taken + 1
        steps.append(Step(wave=max(level[s.initiative] for s in slots), slots=tuple(slots)))
        done |= {s.initiative for s in slots}
        pending = [s for s in pending if s.name not in done]
    return steps


def describe_steps(steps: Sequence[Step]) -> list[str]:
    """One line per step, saying which initiatives run side by side on which devices."""
    lines = []
    for i, step in enumerate(steps, 1):
        parts = [f"{s.initiative} ({s.device}#{s.index})" for s in step.slots]
        together = "side by side: " if len(parts) > 1 else "alone: "
        lines.append(f"step {i} (wave {step.wave}) — {together}{', '.join(parts)}")
    return lines


def dump_plan(plan: Plan) -> str:
    """The plan as YAML that :func:`load_plan` reads back."""
    body = plan.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110)
