"""``python -m cbir``: the same as the ``cbir`` command."""

from cbir.cli import main

raise SystemExit(main())
