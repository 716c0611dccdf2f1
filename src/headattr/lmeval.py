"""`python -m headattr.lmeval`: lm-eval's command line with the `headattr` model registered.

The documented entry point (`import headattr.lmeval` registers the model); the model is
`headattr.generation.lmeval`.
"""

import sys

from headattr.generation.lmeval import HeadattrLM, main

__all__ = ["HeadattrLM", "main"]

if __name__ == "__main__":
    sys.exit(main())
