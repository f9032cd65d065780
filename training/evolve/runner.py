"""Run a round: hold out real articles, run the initiatives step by step on the devices at hand, each on its
own meter of the shared ledger, judge every candidate on the held-out set, write the report.

Everything a round has done lives in its work directory, so a round that was stopped (or killed) goes on
where it was with ``resume``:

- ``heldout.json`` — the held-out article ids, chosen once (a stable hash of seed and id, stratified by the
  oracle tier under the best-ranked initiative's filter) and reused; ``heldout.jsonl`` / ``train.jsonl``,
  the real labelled rows on either side of it (an initiative's extra data gets its own train file);
- ``ledger.jsonl`` — every charge and every end (:mod:`training.evolve.ledger`);
- ``initiatives/<name>/`` — each initiative's work and checkpoints;
- ``evaluation.json`` — the held-out comparisons, keyed by candidate package hash; ``report.md``, the PNGs,
  ``export/`` (the winner) and ``next-round.yaml`` (:mod:`training.evolve.report`).

On resume an initiative whose ledger status is ``done`` is not run again (its recorded outcome is reused);
a ``stopped``, ``failed`` or ``running`` (killed) one runs again with what is left of its allocation and
finds its checkpoints. Before an initiative starts, its allocation is capped at what the round has left
(the budget less everything charged and less what the initiatives beside it may still spend), so the
round never spends more than its total — apart from the one step a job may run past its check.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from scoring.aggregate import aggregate
from scoring.exceptions import FluxscoreError
from scoring.package import FilterPackage, load_package
from training.dataset import extract_scores, read_jsonl
from training.evolve.base import Context, Initiative, Outcome
from training.evolve.exceptions import BudgetExhausted, EvolveError, PlanError
from training.evolve.ledger import Ledger, Meter
from training.evolve.plan import Checked, InitiativeSpec, Step, check_file, dump_plan
from training.steps import ProgressFn, _quiet, default_cache_dir


def registered_initiatives() -> Mapping[str, Initiative]:
    from training.evolve.plan import _registry

    return dict(_registry("INITIATIVES"))


@dataclass
class Split:
    heldout_ids: frozenset[str]
    heldout: Path          # real labelled rows held out (JSONL)
    train: Path            # the rest of the round's data


@dataclass
class RoundResult:
    work: Path
    checked: Checked
    ledger: Ledger
    split: Split
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None
    params: Mapping[str, type[BaseModel]] | None = None   # the Params models the plan was validated with

    def status(self, name: str) -> str:
        return self.ledger.status(name)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _key(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()


def _records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record with an id, first occurrence of an id wins (the files are read in plan order)."""
    seen: set[str] = set()
    out = []
    for path in paths:
        for _, record, _ in read_jsonl(path):
            rid = record.get("id") if record else None
            if record is not None and isinstance(rid, str) and rid and rid not in seen:
                seen.add(rid)
                out.append(record)
    return out


def choose_heldout(records: list[dict[str, Any]], package: FilterPackage, *, fraction: float,
                   seed: int) -> list[str]:
    """Ids held out: within each oracle tier (under ``package``) the share ``fraction`` with the lowest hash of
    (seed, id) — stable whatever order or other rows the files hold. Unlabelled rows form their own stratum."""
    strata: dict[str, list[str]] = {}
    dims = package.config.dimension_names
    for record in records:
        scores, _ = extract_scores(record, dims, package.name)
        tier = aggregate(package.config, scores).tier.value if scores is not None else "unlabelled"
        strata.setdefault(tier, []).append(str(record["id"]))
    chosen: list[str] = []
    for ids in strata.values():
        ids.sort(key=lambda rid: _key(seed, rid))
        chosen += ids[:round(fraction * len(ids))]
    return sorted(chosen)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r) + b"\n")
    tmp.replace(path)


def split_data(checked: Checked, work: Path) -> Split:
    """Hold out real articles once per round (reused on resume) and write both sides."""
    plan = checked.plan
    path = work / "heldout.json"
    sources = {str(p): _digest(p) for p in checked.data}
    records = _records(checked.data)
    if path.is_file():
        body = orjson.loads(path.read_bytes())
        if body.get("sources") != sources:
            raise EvolveError(f"{path}: the round's data files changed since its articles were held out "
                              "(start a new round in another --work directory)")
        ids = list(body["ids"])
    else:
        first = min(plan.initiatives, key=lambda s: s.rank).name
        ids = choose_heldout(records, checked.packages[first], fraction=plan.heldout.fraction,
                             seed=plan.heldout.seed)
        if len(ids) < plan.heldout.min_articles:
            raise PlanError([f"heldout: {len(ids)} articles held out of {len(records)}, fewer than "
                             f"min_articles {plan.heldout.min_articles} (raise fraction or add data)"])
        path.write_bytes(orjson.dumps({"fraction": plan.heldout.fraction, "seed": plan.heldout.seed,
                                       "sources": sources, "ids": ids}, option=orjson.OPT_INDENT_2))
    held = frozenset(ids)
    split = Split(heldout_ids=held, heldout=work / "heldout.jsonl", train=work / "train.jsonl")
    _write_jsonl(split.heldout, [r for r in records if r["id"] in held])
    _write_jsonl(split.train, [r for r in records if r["id"] not in held])
    return split


def _train_file(checked: Checked, split: Split, spec: InitiativeSpec, work: Path) -> Path:
    extra = checked.extra_data.get(spec.name) or []
    if not extra:
        return split.train
    path = work / "initiatives" / spec.name / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _records([split.train, *extra])
    _write_jsonl(path, [r for r in rows if r["id"] not in split.heldout_ids])
    return path


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One run per work directory at a time (the lock goes with the process, also when it is killed)."""
    work.mkdir(parents=True, exist_ok=True)
    with (work / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvolveError(f"{work}: another `fluxscore evolve run` is running on this work directory") from None
        yield


def _stop_reason(ledger: Ledger, name: str) -> str | None:
    for entry in reversed(ledger.entries):
        if entry["initiative"] == name and entry["kind"] in ("stopped", "failed"):
            return str(entry.get("reason"))
    return None


class _Round:
    def __init__(self, checked: Checked, work: Path, ledger: Ledger, split: Split,
                 initiatives: Mapping[str, Initiative], cache_dir: Path, progress: ProgressFn,
                 heartbeat: float) -> None:
        self.checked, self.work, self.ledger, self.split = checked, work, ledger, split
        self.heartbeat = heartbeat
        self.initiatives, self.cache_dir, self.progress = initiatives, cache_dir, progress
        self.outcomes: dict[str, Outcome] = {}

    def known_outcome(self, name: str) -> Outcome | None:
        if self.ledger.status(name) == "done":
            body = self.ledger.outcome(name)
            return Outcome.from_json(body) if body is not None else None
        return None

    def meters(self, step: Step) -> dict[str, Meter | str]:
        """A capped meter for each initiative of the step that is to run, or the reason it does not."""
        plan = self.checked.plan
        left = plan.budget - self.ledger.total_spent()
        out: dict[str, Meter | str] = {}
        for slot in step.slots:
            spec = self.checked.spec(slot.initiative)
            if self.ledger.status(spec.name) == "done":
                continue
            missing = [d for d in spec.depends_on if d not in self.outcomes]
            if missing:
                out[spec.name] = f"skipped: {', '.join(missing)} (depended on) has no outcome"
                continue
            spent = self.ledger.spent(spec.name)
            cap = min(spec.allocation - spent, left)
            if cap <= 1e-12:
                why = "its allocation" if spec.allocation - spent <= left else "the round's budget"
                out[spec.name] = (f"not started: {why} is spent ({spent:.4g} of {spec.allocation:g} charged to it, "
                                  f"{self.ledger.total_spent():.4g} of {plan.budget:g} in the round)")
                continue
            left -= cap
            device = plan.devices[spec.device]
            out[spec.name] = self.ledger.meter(spec.name, allocation=spent + cap,
                                               price_per_hour=device.price_per_hour, device=spec.device,
                                               heartbeat=self.heartbeat)
        return out

    def run_one(self, spec: InitiativeSpec, meter: Meter, torch_device: str) -> None:
        work = self.work / "initiatives" / spec.name
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(initiative=spec.name, kind=spec.kind, package=self.checked.packages[spec.name],
                      train_data=_train_file(self.checked, self.split, spec, self.work),
                      heldout_ids=self.split.heldout_ids, work=work, meter=meter, params=dict(spec.params),
                      device=torch_device, seed=self.checked.plan.heldout.seed, cache_dir=self.cache_dir,
                      labels_db=self.checked.plan.labels_db, progress=self.progress,
                      upstream={d: self.outcomes[d] for d in spec.depends_on})
        try:
            outcome = self.initiatives[spec.kind](ctx)
            if outcome.package_dir is not None:
                load_package(outcome.package_dir)  # a candidate that cannot load is a failure, said now
        except BudgetExhausted as exc:
            self.ledger.stop(spec.name, str(exc))
            return
        except Exception as exc:  # one initiative's failure (a bug, OOM, bad data) must not end the round
            self.ledger.stop(spec.name, f"{type(exc).__name__}: {exc}", failed=True)
            return
        self.ledger.finish(spec.name, outcome.to_json())
        self.outcomes[spec.name] = outcome

    def run_step(self, step: Step) -> None:
        for name in step.names:
            known = self.known_outcome(name)
            if known is not None:
                self.outcomes[name] = known
        meters = self.meters(step)
        jobs: list[tuple[InitiativeSpec, Meter, str]] = []
        for slot in step.slots:
            got = meters.get(slot.initiative)
            if isinstance(got, str):
                if _stop_reason(self.ledger, slot.initiative) != got:
                    self.ledger.stop(slot.initiative, got)
            elif got is not None:
                device = self.checked.plan.devices[slot.device]
                jobs.append((self.checked.spec(slot.initiative), got, device.torch(slot.device, slot.index)))
        if len(jobs) == 1:
            self.run_one(*jobs[0])
        elif jobs:
            with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="evolve") as pool:
                for future in [pool.submit(self.run_one, *job) for job in jobs]:
                    future.result()


def default_work(round_name: str) -> Path:
    return Path("out/evolve") / round_name


def run_round(plan_file: Path, work: Path | None = None, *, resume: bool = False,
              initiatives: Mapping[str, Initiative] | None = None,
              params: Mapping[str, type[BaseModel]] | None = None, roots: list[Path] | None = None,
              cache_dir: Path | None = None, evaluate: bool = True, report: bool = True, eval_device: str = "cpu",
              resamples: int = 1000, heartbeat: float = 30.0, progress: ProgressFn = _quiet) -> RoundResult:
    """Validate the plan, run (or resume) the round in ``work``, evaluate and report.

    ``initiatives`` / ``params`` default to the registered initiatives (tests pass their own)."""
    if initiatives is None:
        initiatives = registered_initiatives()
    if params is None:
        from training.evolve.plan import registered_params

        params = registered_params()
    checked = check_file(plan_file, params=params, roots=roots)
    unknown = sorted({s.kind for s in checked.plan.initiatives} - set(initiatives))
    if unknown:
        raise PlanError([f"no initiative registered for kind {k!r}" for k in unknown], path=str(plan_file))
    work = Path(work or default_work(checked.plan.round))
    ledger_path = work / "ledger.jsonl"
    if ledger_path.exists() and not resume:
        raise EvolveError(f"{work} already holds a round (ledger.jsonl): pass --resume to go on with it, or "
                          "choose another --work directory")
    with _locked(work):
        (work / "plan.yaml").write_text(dump_plan(checked.plan), encoding="utf-8")
        ledger = Ledger(ledger_path)
        split = split_data(checked, work)
        state = _Round(checked, work, ledger, split, initiatives, cache_dir or default_cache_dir(), progress,
                       heartbeat)
        for step in checked.steps:
            state.run_step(step)
        result = RoundResult(work=work, checked=checked, ledger=ledger, split=split, outcomes=state.outcomes,
                             params=params)
        if evaluate:
            result.evaluations = evaluate_round(result, device=eval_device, resamples=resamples,
                                                cache_dir=state.cache_dir)
        if report:
            from training.evolve.report import write_report

            result.report = write_report(result)
    return result


def evaluate_round(result: RoundResult, *, device: str = "cpu", resamples: int = 1000,
                   cache_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Judge each candidate against its parent on the held-out set; reuses judgements of unchanged candidates."""
    from training.evolve.evaluate import Scored, compare, heldout_set, score

    path = result.work / "evaluation.json"
    known: dict[str, dict[str, Any]] = orjson.loads(path.read_bytes()) if path.is_file() else {}
    out: dict[str, dict[str, Any]] = {}
    parents: dict[tuple[str, bool], tuple[Scored, Any]] = {}
    for name, outcome in result.outcomes.items():
        spec = result.checked.spec(name)
        if outcome.package_dir is None:
            out[name] = {"error": "the initiative made no candidate package"}
            continue
        try:
            candidate = load_package(outcome.package_dir)
            parent = result.checked.packages[name]
            prior = known.get(name)
            if prior and prior.get("candidate_hash") == candidate.package_hash and \
                    prior.get("parent_hash") == parent.package_hash and prior.get("metric") == spec.metric:
                out[name] = prior
                continue
            # Quality metrics read cached embeddings (the same vectors); a speed metric times serving as it is.
            cache = None if spec.metric == "articles_per_s" else cache_dir
            key = (parent.package_hash, cache is None)
            if key not in parents:
                data = heldout_set(result.split.heldout, parent)
                parents[key] = (score(parent, data, device=device, cache_dir=cache), data)
            base, data = parents[key]
            if candidate.config.dimension_names != parent.config.dimension_names:
                raise EvolveError(f"{candidate.ref} scores other dimensions than its parent {parent.ref}")
            lift = compare(spec.metric, base, score(candidate, data, device=device, cache_dir=cache), data, parent,
                           resamples=resamples, seed=result.checked.plan.heldout.seed)
            # "parent" / "candidate" are the metric's values (Lift); the packages are *_ref / *_hash
            out[name] = {**lift.to_json(), "candidate_ref": candidate.ref, "candidate_hash": candidate.package_hash,
                         "parent_ref": parent.ref, "parent_hash": parent.package_hash, "heldout_articles": len(data)}
        except (FluxscoreError, OSError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    body = orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    path.write_bytes(body)
    # What the file says (NaN written as null), so a resumed round reads back the same figures.
    result_: dict[str, dict[str, Any]] = orjson.loads(body)
    return result_

