"""The training steps embed exactly as serving does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from scoring.embedding import EmbeddingKey, embed, load_embedder
from scoring.package import load_package
from training.export import scaffold_config
from training.steps import Workspace
from training.steps import embed as train_embed

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prefix", ["", "query: "])
def test_training_embeddings_equal_serving_embeddings(tmp_path: Path, prefix: str) -> None:
    body = scaffold_config("pfx", ["a", "b"], embedding_model="all-MiniLM-L6-v2", head_tokens=32, tail_tokens=8)
    body["stage1"]["text_prefix"] = prefix
    pkg_dir = tmp_path / "pfx" / "1.0.0"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "filter.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    package = load_package(pkg_dir)
    texts = ["Solar farms cooperative shares profits with the village. " * 10, "A short note."]
    work = Workspace(tmp_path / "work", cache_dir=tmp_path / "cache")
    trained_on = train_embed(package, texts, work)
    served = embed(load_embedder("all-MiniLM-L6-v2"), EmbeddingKey.of(package.config), texts, batch_size=8)
    np.testing.assert_allclose(trained_on, served, atol=1e-5)
    # from the on-disk cache the second time, still the same
    np.testing.assert_allclose(train_embed(package, texts, work), served, atol=1e-5)
