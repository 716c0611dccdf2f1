"""`python -m headattr` (and `torchrun ... -m headattr`): the command line."""

import sys

from headattr.cli import main

if __name__ == "__main__":
    sys.exit(main())
