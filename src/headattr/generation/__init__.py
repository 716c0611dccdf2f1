"""Generation: the samplers on the layer stack with head gates, and what is measured with them.

- `sampling`: `headattr.generate` (Dream's and LLaDA's samplers), completion ids and text.
- `decode`: the unmasking decoder of a known-length answer (prune's exact match).
- `scoring`, `taskeval`: task answers scored, accuracy per gate configuration.
- `lmeval`: the lm-evaluation-harness model `headattr`.
"""

from headattr.generation.sampling import completion_ids, completion_text, generate

__all__ = ["completion_ids", "completion_text", "generate"]
