"""The fake LLM API of the oracle tests; it lives in :mod:`training.oracle.fake` (``fluxscore demo`` serves it too)."""

from training.oracle.fake import (
    GOOD,
    GOOD_TEXT,
    MARKER,
    USAGE_IN,
    USAGE_OUT,
    USAGE_THINKING,
    FakeOracle,
    FakeOracleError,
    MockOracle,
    OracleServer,
    Plan,
    Seen,
)

__all__ = ["GOOD", "GOOD_TEXT", "MARKER", "USAGE_IN", "USAGE_OUT", "USAGE_THINKING", "FakeOracle", "FakeOracleError",
           "MockOracle", "OracleServer", "Plan", "Seen"]
