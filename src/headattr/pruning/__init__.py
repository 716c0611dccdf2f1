"""Pruning validation: remove heads in score order and measure what is lost (`headattr prune`)."""

from headattr.pruning.experiment import prune

__all__ = ["prune"]
