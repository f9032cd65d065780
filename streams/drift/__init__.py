"""Drift monitoring: windows of score records (``windows``), Evidently reports (``report``), alert rules
(``alerts``), where reports go (``store``), the reports page (``page``) and ``fluxscore drift`` (``cli``).
The monitor role itself is :mod:`streams.monitor`."""
