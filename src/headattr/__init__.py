"""headattr: Gate-IG attention-head attribution for diffusion language models.

The command line (`headattr ...`) is a thin layer over these functions.
"""

from .aggregate import final_scores, sample_scores
from .consistency import Comparison, compare
from .ensemble import ensemble
from .errors import HeadattrError
from .rundir import Run, read_run, write_run

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "HeadattrError",
    "Run",
    "compare",
    "ensemble",
    "final_scores",
    "read_run",
    "sample_scores",
    "write_run",
]
