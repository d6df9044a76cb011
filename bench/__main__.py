"""``python -m bench``: run the benchmarks (``--smoke`` for the quick CI check)."""

import sys

from bench.cli import main

sys.exit(main())
