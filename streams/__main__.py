"""``python -m streams worker --role probe`` and the other stream commands, without the full CLI."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from streams.cli import main

main()
