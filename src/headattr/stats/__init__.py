"""Statistics shared by the stages: correlations, intervals, reliability projections and curve areas.

A leaf layer: its modules import only numpy, scipy and `headattr.errors`, so any stage can use them.
"""
