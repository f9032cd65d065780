"""Benchmarks: speed per stage, end to end through the broker, and quality against the oracle.

``python -m bench`` runs them all, prints one table and writes JSON under ``bench/results/``.
"""
