"""``python -m cachefs.cli``: the ``cachefs`` command."""

import sys

from cachefs.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
