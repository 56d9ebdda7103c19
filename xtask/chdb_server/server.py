"""The entry point the harness launches: ``python xtask/chdb_server/server.py ...``.

A shim, so that the path stays stable while the code lives in the
``chdb_server`` package next to it (Python puts this file's directory on
``sys.path``, which makes the package importable from any working directory).
"""

import sys

from chdb_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
