"""fluxscore scoring core: the stages from a raw article to a calibrated score record.

Every stage is a function over a batch with no transport concerns; the batch command, the stream
agents, training and the benchmarks all call these same functions.
"""

__version__ = "0.1.0"
