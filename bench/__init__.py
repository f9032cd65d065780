"""Benchmarks: speed per stage, end to end through the broker, and quality against the oracle.

``python -m bench`` runs them all, prints one table and writes JSON under ``bench/results/``.
"""

import os

from scoring.settings import ScoringSettings

# As the fluxscore command does: our tables, not transformers' per-load progress bars, and no hub calls
# from `make bench` (which exports FLUXSCORE_OFFLINE=1).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if ScoringSettings.from_env().offline:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
