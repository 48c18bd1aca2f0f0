"""``python -m cbir``: the same as the ``cbir`` command."""

from .cli import main

raise SystemExit(main())
