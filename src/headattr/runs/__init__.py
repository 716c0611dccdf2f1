"""Runs: a method over a dataset, and the run directory it writes.

- `attribution`: `headattr.attribute` (samples to groups, checkpoints, resume, shards, the run directory).
- `plan`: `attribute --dry-run` (layer passes, FLOPs, memory, a timed probe).
- `distributed`: torchrun ranks, the token-balanced assignment, gathering to rank 0.
- `rundir`: the run-directory format, run.json's layout and atomic writes.
- `ensembling`, `interop`, `budget`, `headmask`: runs combined, exported and imported, turned into sparse
  attention budgets, turned into head masks.
"""
