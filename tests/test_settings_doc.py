"""The README's variable table is generated from the settings classes and must be current."""

from __future__ import annotations

from pathlib import Path

from scoring.settings import README_BEGIN, README_END, FluxscoreSettings, documented_table, env_name

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_is_generated_from_the_settings_classes() -> None:
    text = README.read_text(encoding="utf-8")
    current = text.partition(README_BEGIN)[2].partition(README_END)[0].strip()
    assert current == documented_table().strip(), "the README's variable table is stale: run `make settings-doc`"


def test_every_variable_has_a_meaning() -> None:
    documented_table()  # imports every settings module
    for cls in FluxscoreSettings.registry:
        for name, info in cls.model_fields.items():
            assert info.description, f"{env_name(cls, name)} ({cls.__name__}.{name}) has no description"
