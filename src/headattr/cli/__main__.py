"""`python -m headattr.cli`, the same as `python -m headattr`."""

import sys

from headattr.cli import main

if __name__ == "__main__":
    sys.exit(main())
