"""Pruning validation: remove heads in score order and measure what is lost (`headattr prune`).

Modules: `settings` (PruneSettings), `plan` (which heads each configuration removes), `evaluation` (loss,
accuracy and exact match under gates), `samples` (held-out evaluation samples), `runner` (`prune`),
`results` (PruneResult and its JSON forms), `verdicts`, `faithfulness` (single-head ablation), `outputs`
(files written) and `text` (what the command prints).
"""

from headattr.pruning.results import PruneResult
from headattr.pruning.runner import prune
from headattr.pruning.settings import PruneSettings

__all__ = ["PruneResult", "PruneSettings", "prune"]
