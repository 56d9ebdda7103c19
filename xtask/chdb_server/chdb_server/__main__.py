"""``python -m chdb_server``: run the server (see ``cli.main``)."""

import sys

from .cli import main

sys.exit(main())
