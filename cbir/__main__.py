"""``python -m cbir``: the same as the ``cbir`` command."""

from cbir.cli.main import main

raise SystemExit(main())
