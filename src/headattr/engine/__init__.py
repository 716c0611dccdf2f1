"""The gated-evaluation engine: what every method evaluates, and how rows go through the model.

- `masking`: a sample's masked variants, keyed by (seed, sample, rate, draw); the objective's settings.
- `core`: a sample's variants as rows, the cached layer inputs, J per row and the logits it scored.
- `gates`: per-row head gates on the attention output projection.
- `attention`: attention weights from q and k as the model computes them.
- `batching`: rows per pass from free memory, and the out-of-memory retry.
- `sparse_mask`: head-adaptive block-sparse attention's rules: keep ratios per head, each layer's block mask.
- `sparse_attention`: attention restricted to a block mask (masked SDPA, FlexAttention).
- `sparse_schedule`: its settings, the dense/build/sparse schedule of a generation, the mask store.
- `sparse_hook`: the attention function through which a native model's layers run sparse.
"""
