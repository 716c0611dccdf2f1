"""Model quality under head gates: masked-token loss, accuracy and exact match on a set of samples.

The loss is exactly the attribution objective (the core's `objective` with `mean-masked`, at the run's mask
probabilities, draws and mask seed; loss = -J), averaged over a sample's masked variants and then over
samples; masked-token accuracy is the argmax of the very logits the loss used (with the model's logit shift),
averaged the same way; exact match decodes a fully masked answer by `unmask_decode` under the same gates, on
the core's `forward_logits` (block-causal attention for a block-diffusion family, as at its inference).

Every gate configuration of every sample is evaluated in the same batched passes: the rows of a batch are
(configuration, masked variant) pairs with their own gates, and a configuration whose first removed head is
in layer l starts from the cached input of layer l (unchanged by gates of later layers), as attribution does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated, row_gates
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.generation.decode import unmask_decode
from headattr.models import ModelSpec
from headattr.runs.rundir import Run

METRICS = ("loss", "accuracy", "exact_match")


def measured_metrics(decode: bool) -> list[str]:
    """The metrics a pruning run measures: exact match only when it decodes."""
    return [m for m in METRICS if m != "exact_match" or decode]


@dataclass
class Metrics:
    """Model quality on a set of samples under one gate configuration."""

    loss: float  # masked-token cross-entropy (mean over masked tokens, variants, samples)
    accuracy: float  # masked-token argmax accuracy (same averaging)
    exact_match: float | None = None  # fraction of answers decoded exactly, if measured
    task: dict[str, float] = field(default_factory=dict)  # task_<metric> -> accuracy of generated answers

    def value(self, metric: str) -> float | None:
        """The value of `metric`: a fixed one (loss, accuracy, exact_match) or a task one (task_<name>)."""
        return self.task[metric] if metric in self.task else getattr(self, metric)

    def to_dict(self) -> dict[str, float]:
        """The measured values (`exact_match` only when the known-span decoder ran)."""
        known = {} if self.exact_match is None else {"exact_match": self.exact_match}
        return {"loss": self.loss, "accuracy": self.accuracy, **known, **self.task}


def eval_masking(run: Run) -> MaskConfig:
    """The masking of the run (probabilities, draws, mask seed) with the `mean-masked` loss, for evaluation."""
    return MaskConfig.from_meta(run.meta.get("config", {})).replace(loss_normalize="mean-masked")


def _first_gated_layer(gates: torch.Tensor) -> torch.Tensor:
    """[C] the first layer whose gates differ from 1 in each [C, L, H] configuration (L - 1 if none).

    A configuration that removes nothing starts at the last layer: its cached input is the exact model's.
    """
    touched = (gates != 1).any(dim=2)  # [C, L]
    num_layers = gates.shape[1]
    first = torch.where(touched.any(dim=1), touched.float().argmax(dim=1), torch.tensor(num_layers - 1))
    return first.clamp(max=num_layers - 1)


def _variant_metrics(
    spec: ModelSpec, rows: core.Rows, v_idx: torch.Tensor, gates: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) of each row: row r is variant `v_idx[r]` under gates `gates[r]` ([B, L, H])."""
    with torch.no_grad(), gated(spec, row_gates(gates, start)):
        out = core.objective(spec, rows, v_idx, start, with_logits=True)
    correct = (out.logits.argmax(dim=-1) == out.labels).double().cpu()
    owner, n = out.owner.cpu(), len(v_idx)
    hits = torch.zeros(n, dtype=torch.float64).index_add(0, owner, correct)
    counts = torch.zeros(n, dtype=torch.float64).index_add(0, owner, torch.ones_like(correct))
    return -out.j.double().cpu(), hits / counts


def sample_metrics(
    spec: ModelSpec, sample: Sample, gates: torch.Tensor, masking: MaskConfig, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy [C] of one sample under each of the [C, L, H] gate configurations.

    Each is the mean over the sample's masked variants (the run's masks, keyed by its uid). Rows are
    (configuration, variant) pairs, grouped by the layer their pass starts at (the configuration's first gated
    layer, where the backbone can resume) so that a pass starts there from the cached hidden states;
    `batch_size` rows per pass.
    """
    rows = core.prepare(spec, sample, masking, batch_size, cache_layers=True)
    n_conf, n_var = gates.shape[0], rows.num_variants
    first = torch.tensor([spec.backbone.entry_layer(int(f)) for f in _first_gated_layer(gates)])
    gates = gates.to(spec.device)
    loss = torch.zeros(n_conf, n_var, dtype=torch.float64)
    acc = torch.zeros(n_conf, n_var, dtype=torch.float64)
    for start in sorted(set(first.tolist())):
        conf = torch.nonzero(first == start).squeeze(1)
        c_idx = conf.repeat_interleave(n_var)
        v_idx = torch.arange(n_var).repeat(len(conf))
        for sl in core.chunks(len(c_idx), batch_size):
            c, v = c_idx[sl], v_idx[sl]
            row_loss, row_acc = _variant_metrics(spec, rows, v.to(spec.device), gates[c.to(spec.device)], start)
            loss[c, v], acc[c, v] = row_loss, row_acc
    return loss.mean(dim=1).numpy(), acc.mean(dim=1).numpy()


def sample_exact_match(spec: ModelSpec, sample: Sample, gates: torch.Tensor, batch_size: int) -> np.ndarray:
    """[C] whether the answer decoded from a fully masked answer is exact, under each configuration."""
    start, end = core.answer_span(spec, sample)
    ids = torch.tensor(sample.input_ids, dtype=torch.long, device=spec.device)
    positions = torch.arange(start, end)
    gates = gates.to(spec.device)
    exact = np.zeros(gates.shape[0], dtype=bool)
    for sl in core.chunks(gates.shape[0], batch_size):
        chunk = gates[sl]

        def logits_fn(batch_ids: torch.Tensor, keep: slice, chunk: torch.Tensor = chunk) -> torch.Tensor:
            with gated(spec, row_gates(chunk)):
                return core.forward_logits(spec, batch_ids, keep=keep)

        batch = ids.expand(len(chunk), -1)
        decoded = unmask_decode(logits_fn, batch, positions, spec.mask_token_id, shift=spec.logit_shift, narrow=True)
        exact[sl] = (decoded == batch).all(dim=1).cpu().numpy()
    return exact


def evaluate_many(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | torch.Tensor,
    masking: MaskConfig,
    *,
    batch_size: int = 64,
    decode: np.ndarray | bool = False,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """Metrics of C gate configurations ([C, L, H]) over `samples`, each a [C] array (mean over samples).

    `decode` (bool, or [C] booleans) says for which configurations exact-match is measured; elsewhere
    `exact_match` is NaN.
    """
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    if not samples:
        raise HeadattrError("no evaluation samples; check --eval-data and --eval-samples")
    gates = torch.as_tensor(np.asarray(gates, dtype=np.float32))
    if gates.dim() != 3 or tuple(gates.shape[1:]) != (spec.num_layers, spec.num_heads):
        raise ValueError(f"gates must be [C, {spec.num_layers}, {spec.num_heads}], got {tuple(gates.shape)}")
    n_conf = gates.shape[0]
    want = np.array(np.broadcast_to(np.asarray(decode, dtype=bool), (n_conf,)))
    loss, acc, exact = np.zeros(n_conf), np.zeros(n_conf), np.zeros(n_conf)
    for sample in tqdm(samples, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True, leave=False):
        s_loss, s_acc = sample_metrics(spec, sample, gates, masking, batch_size)
        loss += s_loss
        acc += s_acc
        if want.any():
            exact[want] += sample_exact_match(spec, sample, gates[torch.from_numpy(want)], batch_size)
    n = len(samples)
    return {"loss": loss / n, "accuracy": acc / n, "exact_match": np.where(want, exact / n, np.nan)}


def evaluate(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | None,
    masking: MaskConfig,
    *,
    batch_size: int = 64,
    decode: bool = False,
    progress: bool = False,
) -> Metrics:
    """Loss, masked-token accuracy and (with `decode`) exact-match of the model under one [L, H] gate setting
    (None: the unpruned model)."""
    matrix = np.ones((spec.num_layers, spec.num_heads)) if gates is None else np.asarray(gates, dtype=np.float64)
    out = evaluate_many(spec, samples, matrix[None], masking, batch_size=batch_size, decode=decode, progress=progress)
    return Metrics(float(out["loss"][0]), float(out["accuracy"][0]), float(out["exact_match"][0]) if decode else None)
