"""Fixtures of the oracle tests: a toy filter package, and the fake API over a mock transport or sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scoring.package import FilterPackage, load_package
from tests.training.oracle.common import KEY, ODD_KEY
from tests.training.oracle_server import MockOracle, OracleServer


@pytest.fixture
def package(tmp_path: Path) -> FilterPackage:
    pkg = tmp_path / "pkg" / "toy" / "1.0.0"
    pkg.mkdir(parents=True)
    config = {
        "name": "toy", "version": "1.0.0",
        "dimensions": [{"name": "alpha", "weight": 0.5, "description": "how alpha"},
                       {"name": "beta", "weight": 0.5, "description": "how beta"}],
        "stage1": {"embedding_model": "unused", "probe": "probe.safetensors", "probe_meta": "probe.json",
                   "threshold": 3.0},
        "oracle_prompt": "prompt.md",
    }
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config))
    (pkg / "prompt.md").write_text("Rate the article on alpha and beta, 0-10, as JSON.")
    return load_package(pkg)


@pytest.fixture
def fake() -> MockOracle:
    """The fake API behind an httpx.MockTransport: pass ``transport=fake.transport``."""
    return MockOracle(KEY)


@pytest.fixture
def odd_fake() -> MockOracle:
    return MockOracle(ODD_KEY)


@pytest.fixture
def server() -> Iterator[OracleServer]:
    """The fake API on a real loopback socket, for what a mock transport cannot show."""
    srv = OracleServer(KEY, hang=1.0).start()
    yield srv
    srv.stop()


@pytest.fixture
def odd_server() -> Iterator[OracleServer]:
    srv = OracleServer(ODD_KEY).start()
    yield srv
    srv.stop()
