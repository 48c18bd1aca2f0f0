#!/usr/bin/env python3
"""The original entry point: ``python3 run_cbir.py -dataset ./dataset -img_query q.jpg``.

Indexes the dataset (reusing and updating its index), then shows the most similar images.
All options: ``python3 run_cbir.py --help``; the full tool is the ``cbir`` command.
"""

import sys

from cbir.cli.main import legacy_main

if __name__ == "__main__":
    sys.exit(legacy_main())
