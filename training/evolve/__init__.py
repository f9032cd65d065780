"""Improvement rounds under a compute budget (``fluxscore evolve plan|run``).

A round is a plan file (:mod:`training.evolve.plan`): a money budget, prices per device-hour, and ranked
initiatives (augmentation, feedback adapters, long-context curriculum, Optuna sweeps, distillation), each
with an allocation. :mod:`training.evolve.ledger` records every second of device time a job uses and
stops a job when its allocation is spent; initiatives (:mod:`training.evolve.initiatives`) produce
candidate filter packages, judged on a held-out set no initiative trained on; the round's report names
the cost, the measured lift and the return per unit of money of each.
"""
