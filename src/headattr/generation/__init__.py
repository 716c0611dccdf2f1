"""Generation: the samplers on the layer stack with head gates, and what is measured with them.

- `sampling`: `headattr.generate` (dispatching to the family's sampler), completion ids and text.
- `sampler`: the `Sampler` record and the registry families name their samplers in; `dream`, `llada`, `sdar`,
  `llada2`: each family's sampler, settings and likelihood estimate; `rows`, `schedule`: what the samplers share;
  `blockdiff`, `blockattn`: what the block-diffusion samplers share (canvas, commit rule, block-causal pass).
- `decode`: the unmasking decoder of a known-length answer (prune's exact match).
- `scoring`, `taskeval`: task answers scored, accuracy per gate configuration.
- `lmeval`: the lm-evaluation-harness model `headattr`.
"""

from headattr.generation.dream import DreamSettings
from headattr.generation.llada import LLaDASettings
from headattr.generation.llada2 import LLaDA2Settings
from headattr.generation.sampling import completion_ids, completion_text, generate
from headattr.generation.sdar import SDARSettings

__all__ = [
    "DreamSettings",
    "LLaDASettings",
    "LLaDA2Settings",
    "SDARSettings",
    "completion_ids",
    "completion_text",
    "generate",
]
