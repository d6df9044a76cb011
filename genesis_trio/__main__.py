"""``python -m genesis_trio`` is the ``genesis-trio`` command."""

import sys

from ._cli import main

sys.exit(main())
