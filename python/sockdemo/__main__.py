"""``python -m sockdemo server|client|chat|bench|cert``: see ``--help``."""

import sys

from .cli import main

sys.exit(main())
