"""The one YAML-to-model loader and validation-error wording, and the four places that use them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scoring.article import parse_article
from scoring.commerce import load_config as load_commerce_config
from scoring.exceptions import ArticleValidationError, FluxscoreError, PackageError
from scoring.package import load_config as load_filter_config
from scoring.pipeline import Screened
from scoring.schema import format_validation_error, load_yaml_model
from streams.exceptions import WireFormatError
from streams.wire import decode_screened

from .conftest import filter_config


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = Field(gt=0)
    tags: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _lower(cls, value: str) -> str:
        if value != value.lower():
            raise ValueError("must be lower case")
        return value


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Rule.model_validate(data)
    return info.value


def test_every_problem_as_location_and_message() -> None:
    exc = _error({"name": "X", "weight": 0, "tags": ["a", 2]})
    assert format_validation_error(exc) == ("name: must be lower case; weight: Input should be greater than 0; "
                                            "tags.1: Input should be a valid string")


def test_first_only_counts_the_rest() -> None:
    exc = _error({"name": "X", "weight": 0, "tags": ["a", 2]})
    assert format_validation_error(exc, first_only=True) == "name: must be lower case (and 2 more)"
    assert format_validation_error(_error({"name": "x", "weight": 0}), first_only=True) == \
        "weight: Input should be greater than 0"


def test_quoted_locations_and_the_root() -> None:
    assert format_validation_error(_error({"name": "X", "weight": 1}), quoted=True) == "'name': must be lower case"
    assert format_validation_error(_error([1])) == "<root>: Input should be a valid dictionary or instance of Rule"


def test_input_values_never_appear() -> None:
    secret = "the whole article body " * 20
    assert secret.strip() not in format_validation_error(_error({"name": secret.upper(), "weight": 1}))


@pytest.mark.parametrize(("body", "words"), [
    ("name: [unclosed", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
    ("", "must hold a mapping"),
    ("name: x\nweight: -1\nextra: 1\n", "is invalid: weight: Input should be greater than 0; extra: Extra inputs"),
])
def test_load_yaml_model_names_the_file_and_carries_context(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text(body)
    with pytest.raises(PackageError, match=words) as info:
        load_yaml_model(path, Rule, filter="toy")
    assert str(path) in info.value.message
    assert info.value.context == {"filter": "toy", "path": str(path)}


def test_load_yaml_model_returns_the_model_and_takes_another_error(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text("name: x\nweight: 0.5\n")
    assert load_yaml_model(path, Rule) == Rule(name="x", weight=0.5)
    path.write_text("name: x\n")
    with pytest.raises(FluxscoreError, match="weight: Field required") as info:
        load_yaml_model(path, Rule, error=FluxscoreError, where="test")
    assert type(info.value) is FluxscoreError and info.value.context == {"path": str(path), "where": "test"}


def test_context_from_the_mapping_is_added_to_validation_errors_only(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text("name: Named\nweight: 1\n")
    with pytest.raises(PackageError) as info:
        load_yaml_model(path, Rule, context_of=lambda raw: {"filter": raw.get("name")})
    assert info.value.filter == "Named"


# --- the four users -----------------------------------------------------------------------------------

def test_filter_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "filter.yaml"
    config.write_text(yaml.safe_dump(filter_config(unexpected=1)))
    with pytest.raises(PackageError, match=r"filter\.yaml is invalid: unexpected: Extra inputs") as info:
        load_filter_config(tmp_path)
    assert info.value.filter == "toy", "an invalid config is still named by its name"
    config.write_text("name: [")
    with pytest.raises(PackageError, match="is not valid YAML"):
        load_filter_config(config)


def test_commerce_config_errors(tmp_path: Path) -> None:
    (tmp_path / "commerce.yaml").write_text("version: '1'\n")
    with pytest.raises(PackageError, match=r"commerce\.yaml is invalid: embedding_model: Field required; ") as info:
        load_commerce_config(tmp_path)
    assert info.value.context["filter"] == "commerce"
    (tmp_path / "commerce.yaml").write_text("[1, 2]")
    with pytest.raises(PackageError, match="must hold a mapping"):
        load_commerce_config(tmp_path)


def test_article_errors_name_the_first_field() -> None:
    with pytest.raises(ArticleValidationError) as info:
        parse_article(b'{"id": "a", "tags": "x", "metadata": [1]}')
    assert info.value.message == "invalid field 'tags': Input should be a valid list (and 1 more)"
    assert info.value.field == "tags"


def test_wire_errors_name_the_model_and_the_first_problem() -> None:
    with pytest.raises(WireFormatError) as info:
        decode_screened(b'{"article": {"id": "s-1"}}')
    assert info.value.message.startswith(f"not a valid {Screened.__name__}: ")
    assert info.value.context["article_id"] == "s-1"
    with pytest.raises(WireFormatError, match=r"not a valid Screened: <root>: Invalid JSON"):
        decode_screened(b"{oops")
