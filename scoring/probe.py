"""Stage-1 probe: a small MLP from one sentence embedding to all of a filter's dimensions.

Weights live in safetensors, everything needed to rebuild the network (dimensions, encoder, layer
sizes, input standardisation, training facts) in a JSON file beside them. Standardisation is part of
the network, so the probe takes raw embeddings and nothing else needs to be carried around.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scoring.exceptions import ModelFilesMissingError, ModelLoadError, PackageError, ScoringError

META_FORMAT = "fluxscore-probe/1"
SCORE_RANGE = (0.0, 10.0)


class ProbeNet(nn.Module):
    """Standardise -> [Linear -> ReLU -> Dropout]* -> Linear -> clamp to the score range."""

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, input_dim: int, hidden: Sequence[int], n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        out = self.layers((x - self.input_mean) / self.input_std)
        # Training calls with clamp=False: a clamp has no gradient outside the range.
        return out.clamp(*SCORE_RANGE) if clamp else out


class Probe:
    """A loaded probe; :meth:`predict` maps (n, input_dim) embeddings to (n, n_dims) raw scores."""

    def __init__(self, net: ProbeNet, *, dimensions: list[str], embedding_model: str, input_dim: int,
                 hidden: Sequence[int], dropout: float, training: dict[str, Any] | None = None,
                 device: str = "cpu") -> None:
        self.net = net.to(device).eval()
        self.dimensions = list(dimensions)
        self.embedding_model = embedding_model
        self.input_dim = input_dim
        self.hidden = [int(h) for h in hidden]
        self.dropout = float(dropout)
        self.training = dict(training or {})
        self.device = device

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, n_dims) float64 scores on 0-10 (clamped)."""
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.input_dim:
            raise ScoringError(f"probe expects embeddings of shape (n, {self.input_dim}), got {emb.shape}; "
                               f"was it trained on {self.embedding_model!r}?", stage="probe")
        if emb.shape[0] == 0:
            return np.zeros((0, len(self.dimensions)), dtype=np.float64)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(self.device)
            return self.net(x).double().cpu().numpy()

    def meta(self) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "dimensions": self.dimensions,
            "embedding_model": self.embedding_model,
            "input_dim": self.input_dim,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "activation": "relu",
            "output_clamp": list(SCORE_RANGE),
            "input_mean": self.net.input_mean.cpu().double().tolist(),
            "input_std": self.net.input_std.cpu().double().tolist(),
            "training": self.training,
        }

    def save(self, weights: Path, meta: Path) -> None:
        weights, meta = Path(weights), Path(meta)
        weights.parent.mkdir(parents=True, exist_ok=True)
        meta.parent.mkdir(parents=True, exist_ok=True)
        # Standardisation lives in the JSON (readable, diffable); the safetensors hold the layers only.
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                 if not k.startswith("input_")}
        save_file(state, str(weights), metadata={"format": META_FORMAT})
        meta.write_text(json.dumps(self.meta(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, weights: Path, meta: Path, *, device: str = "cpu") -> Probe:
        weights, meta = Path(weights), Path(meta)
        missing = [str(p) for p in (weights, meta) if not p.is_file()]
        if missing:
            raise ModelFilesMissingError(f"probe files missing: {', '.join(missing)}", missing=missing,
                                         path=str(weights.parent))
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"probe metadata {meta} is not valid JSON: {exc}", path=str(meta)) from None
        try:
            dims = [str(d) for d in info["dimensions"]]
            input_dim = int(info["input_dim"])
            hidden = [int(h) for h in info.get("hidden", [])]
            dropout = float(info.get("dropout", 0.0))
            embedding_model = str(info["embedding_model"])
            mean = torch.tensor(info.get("input_mean", [0.0] * input_dim), dtype=torch.float32)
            std = torch.tensor(info.get("input_std", [1.0] * input_dim), dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"probe metadata {meta} lacks or mistypes a field: {exc!r}",
                               path=str(meta)) from None
        if mean.shape != (input_dim,) or std.shape != (input_dim,):
            raise PackageError(f"probe metadata {meta}: input_mean/input_std must have {input_dim} values",
                               path=str(meta))
        net = ProbeNet(input_dim, hidden, len(dims), dropout)
        try:
            state = load_file(str(weights))
            state["input_mean"], state["input_std"] = mean, std
            net.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ModelLoadError(f"probe weights {weights} do not match {meta} "
                                 f"(input_dim {input_dim}, hidden {hidden}, {len(dims)} outputs): {exc}",
                                 path=str(weights)) from None
        return cls(net, dimensions=dims, embedding_model=embedding_model, input_dim=input_dim,
                   hidden=hidden, dropout=dropout, training=info.get("training"), device=device)
