"""``python -m mela ...`` is the ``mela`` command."""

import sys

from mela.cli import main

if __name__ == "__main__":
    sys.exit(main())
