"""``python -m experiments`` is the ``backdrop`` command."""

import sys

from experiments.cli import main

sys.exit(main())
