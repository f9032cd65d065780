"""The real broker and Redis of the stream integration tests, for the stream unit tests that need them; the
two-dimension package the oracle and feedback roles are tested with; what a recording sender records."""

from pathlib import Path

import pytest
import yaml

from scoring.package import FilterPackage, load_package
from tests.integration.conftest import broker, redis_server

# (topic, key, value, headers) of each message a recording sender was handed.
Sent = list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]


@pytest.fixture
def package(tmp_path: Path) -> FilterPackage:
    """A package with two dimensions and a prompt, and no models: the roles under test never score."""
    pkg = tmp_path / "pkg" / "toy" / "1.0.0"
    pkg.mkdir(parents=True)
    config = {"name": "toy", "version": "1.0.0",
              "dimensions": [{"name": "alpha", "weight": 0.5, "description": "how alpha"},
                             {"name": "beta", "weight": 0.5, "description": "how beta"}],
              "stage1": {"embedding_model": "unused", "probe": "probe.safetensors", "probe_meta": "probe.json",
                         "threshold": 3.0},
              "oracle_prompt": "prompt.md"}
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config))
    (pkg / "prompt.md").write_text("Rate the article on alpha and beta, 0-10, as JSON.")
    return load_package(pkg)


__all__ = ["Sent", "broker", "package", "redis_server"]
