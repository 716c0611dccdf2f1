"""report.md of `headattr compare`: one renderer (`report.Renderer`) assembled from one class per group of sections.

Every section asks the language's string table (`reports.strings`) for its words and takes every number
from the `Comparison`; nothing is typed in by hand.
"""
