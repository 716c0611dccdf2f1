"""`headattr sparse`: is a head-adaptive sparse-attention budget better than a uniform one, and than dense?

`allocations` (keep ratios per allocation, all at one mean), `evaluate` (generate, score, time, budget used,
through an injected generate function), `results` (sparse.json, paired comparisons from `stats.paired`),
`outputs` (the files), `settings` (`SparseEvalSettings`).
"""
