"""``python -m einplan``: the einplan command line (see ``einplan --help``)."""

import sys

from .cli import main

sys.exit(main())
