"""``python -m chipjax COMMAND ...``: the ``chipjax`` command line (:mod:`chipjax.cli`)."""
import sys

from .cli import main

sys.exit(main())
