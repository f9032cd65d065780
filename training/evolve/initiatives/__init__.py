"""The initiatives of an improvement round, one module each, registered by kind.

Each module has ``run(ctx) -> Outcome`` (:mod:`training.evolve.base`) and ``Params``, the frozen model of its
plan parameters, which ``fluxscore evolve plan`` validates before anything runs.
"""

from __future__ import annotations

from pydantic import BaseModel

from training.evolve.base import Initiative
from training.evolve.initiatives import augment, curriculum, distill, feedback, sweep

_MODULES = {"augment": augment, "feedback": feedback, "curriculum": curriculum, "sweep": sweep,
            "distill": distill}

INITIATIVES: dict[str, Initiative] = {kind: module.run for kind, module in _MODULES.items()}
INITIATIVES_PARAMS: dict[str, type[BaseModel]] = {kind: module.Params for kind, module in _MODULES.items()}

__all__ = ["INITIATIVES", "INITIATIVES_PARAMS"]
