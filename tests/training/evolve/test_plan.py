"""Plan validation: the arithmetic, over-allocation, cycles and every other problem, all listed at once;
the schedule packs dependency waves onto the devices at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.evolve.conftest import ReprobeParams, write_plan
from training.evolve.exceptions import PlanError
from training.evolve.plan import check_file, describe_steps, dump_plan, find_cycle, load_plan, schedule

PARAMS = {"reprobe": ReprobeParams}


def _init(name: str, rank: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "reprobe", "rank": rank, "filter": "demo", "allocation": 1.0, "device": "cpu",
            **kw}


def _plan(tmp_path: Path, initiatives: list[dict[str, Any]], **kw: Any) -> Path:
    data = tmp_path / "labels.jsonl"
    data.write_text("{}\n")
    body = {"round": "r1", "budget": 10.0, "devices": {"cpu": {"count": 2, "price_per_hour": 0.5},
                                                       "h100": {"count": 1, "price_per_hour": 10.0}},
            "heldout": {"fraction": 0.2}, "data": ["labels.jsonl"], "initiatives": initiatives, **kw}
    return write_plan(tmp_path / "plan.yaml", body)


def test_valid_plan_resolves_filters_and_relative_data(tmp_path: Path) -> None:
    checked = check_file(_plan(tmp_path, [_init("a", 1, hours=2.0), _init("b", 2, depends_on=["a"])]),
                         params=PARAMS)
    assert checked.packages["a"].name == "demo"
    assert checked.data == [tmp_path / "labels.jsonl"]
    assert [s.names for s in checked.steps] == [["a"], ["b"]]
    # what dump_plan writes loads back to the same plan
    again = tmp_path / "again.yaml"
    again.write_text(dump_plan(checked.plan))
    assert load_plan(again) == checked.plan


def test_the_held_out_share_defaults_to_a_fifth(tmp_path: Path) -> None:
    path = _plan(tmp_path, [_init("a", 1)])
    body = path.read_text().replace("heldout:", "unused_heldout:")
    import yaml

    loaded = yaml.safe_load(body)
    loaded.pop("unused_heldout")
    checked = check_file(write_plan(tmp_path / "plain.yaml", loaded), params=PARAMS)
    assert checked.plan.heldout.fraction == 0.2 and checked.plan.heldout.seed == 0


def test_every_problem_is_listed_with_the_arithmetic(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [
        _init("a", 1, allocation=1.0, device="h100", hours=100.0),          # $1 ≠ 100 h × $10/h
        _init("b", 1, allocation=6.0, depends_on=["c"]),                     # rank taken; cycle b → c → b
        _init("c", 2, allocation=6.0, depends_on=["b", "ghost"], metric="mae:nope"),
        _init("c", 3, device="tpu"),
        _init("d", 4, kind="teleport", filter="nosuch", data=["missing.jsonl"]),
        _init("e", 5, params={"hidden": 0, "colour": "red"}),
    ], data=["labels.jsonl", "gone.jsonl"])
    with pytest.raises(PlanError) as info:
        check_file(plan, params=PARAMS)
    text = "\n".join(info.value.problems)
    assert "allocations exceed the budget: $1.00 + $6.00 + $6.00 + $1.00 + $1.00 + $1.00 = $16.00 > $10.00" in text
    assert "'a': allocation and hours do not multiply out: $1.00 ≠ 100 h × $10.00/h = $1,000.00" in text
    assert "ranks not unique: rank 1: a, b" in text
    assert "initiative names used twice: c" in text
    assert "dependency cycle: b → c → b" in text
    assert "depends on unknown initiative 'ghost'" in text
    assert "unknown device kind 'tpu'" in text
    assert "unknown kind 'teleport'" in text
    assert "unknown filter 'nosuch'" in text
    assert "missing.jsonl not found" in text and "data file gone.jsonl not found" in text
    assert "demo@1.0.0 has no dimension 'nope'" in text
    assert "'e': params.hidden:" in text and "'e': params.colour: Extra inputs are not permitted" in text
    assert str(plan) in str(info.value)


def test_schema_errors_name_the_initiative(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [_init("a", 1, allocation=-1, colour="red")])
    with pytest.raises(PlanError) as info:
        check_file(plan, params=PARAMS)
    assert any(p.startswith("initiatives.a.allocation") for p in info.value.problems)
    assert any(p.startswith("initiatives.a.colour") for p in info.value.problems)


def test_schedule_packs_waves_onto_devices(tmp_path: Path) -> None:
    plan = load_plan(_plan(tmp_path, [
        _init("a", 1), _init("b", 2), _init("c", 3), _init("e", 5, device="h100"),
        _init("d", 4, device="h100", depends_on=["a"]), _init("f", 6, device="h100")]))
    steps = schedule(plan)
    # two CPUs and one H100 at hand: c waits for a CPU; d (after a) takes the H100 before f, which ranks lower
    assert [(s.wave, s.names) for s in steps] == [(0, ["a", "b", "e"]), (1, ["c", "d"]), (0, ["f"])]
    assert [(sl.device, sl.index) for sl in steps[0].slots] == [("cpu", 0), ("cpu", 1), ("h100", 0)]
    lines = describe_steps(steps)
    assert lines[0] == "step 1 (wave 0) — side by side: a (cpu#0), b (cpu#1), e (h100#0)"
    assert lines[2] == "step 3 (wave 0) — alone: f (h100#0)"


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
