"""The annotator service: people label the active-learning queue (``fluxscore annotate …``).

Queue items arrive on ``active-learning.<filter>``; :mod:`.consumer` moves them into Redis, where
:mod:`.queue` hands them out by priority under leases; :mod:`.app` serves the web page and the JSON
API; answers go to the durable :class:`training.labels.LabelStore`. :mod:`.settings`, :mod:`.exceptions` and
:mod:`.cli` import without the web extras (FastAPI, uvicorn), so the commands are listed, and the README
table generated, on any installation.
"""
