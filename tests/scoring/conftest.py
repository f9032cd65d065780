from pathlib import Path
from typing import Any

import pytest
import yaml


def filter_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "toy",
        "version": "1.0.0",
        "description": "a toy filter",
        "dimensions": [
            {"name": "impact", "weight": 0.5, "description": "how much"},
            {"name": "evidence", "weight": 0.3, "description": "how sure"},
            {"name": "reach", "weight": 0.2, "description": "how many"},
        ],
        "gatekeepers": [{"dimension": "evidence", "minimum": 3.0, "cap": 3.0}],
        "tiers": {"high": 7.0, "medium": 4.0},
        "stage1": {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "probe": "probe.safetensors",
                   "probe_meta": "probe.json", "threshold": 3.0},
        "oracle_prompt": "prompt.md",
    }
    config.update(overrides)
    return config


@pytest.fixture
def toy_package_dir(tmp_path: Path) -> Path:
    pkg = tmp_path / "toy" / "1.0.0"
    pkg.mkdir(parents=True)
    (pkg / "filter.yaml").write_text(yaml.safe_dump(filter_config()))
    (pkg / "prompt.md").write_text("Score impact, evidence, reach.")
    return pkg
