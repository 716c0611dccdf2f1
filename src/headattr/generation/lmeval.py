"""An lm-evaluation-harness (0.4.x) model `headattr`: Dream / LLaDA, optionally with heads removed.

    python -m headattr.lmeval --model headattr \
        --model_args pretrained=DIR,head_mask=prune/head_mask.json,fraction=0.2,order=most,steps=256 --tasks gsm8k

lm-eval 0.4 finds models only in its own registry (no entry points), so `python -m headattr.lmeval` (or the
`headattr-lm-eval` script) registers this class and then runs lm-eval's own command line with the arguments
given; from Python, `import headattr.generation.lmeval` before `lm_eval.simple_evaluate(model="headattr", ...)`.

model_args: `pretrained` (checkpoint directory or hub id), `head_mask` + `fraction` [+ `order` most|least|random,
`random_order`] (heads removed, from `headattr prune`'s head_mask.json), `dtype`, `device`, `add_bos_token`
(default true), `max_length` (prompt + generation; prompts are cut from the left), `seed` (default 1234),
`mc_num` (default 128) and `mc_batch_size` (default 32) for loglikelihood, and the family's generation settings
(`headattr.generate`), e.g. `max_new_tokens=256,steps=256,alg=entropy` (Dream) or `gen_length=1024,steps=1024,
block_length=1024` (LLaDA). Block-sparse attention in generation (`generate_until`; the likelihood stays
dense): `sparse` (a `headattr budget` file, a run directory or `uniform:RATIO`) with `sparse_skip`,
`sparse_block`, `sparse_select`, `sparse_min_keep`, `sparse_gqa`, `sparse_compat`, `sparse_kernel`, the
flags of `headattr generate --sparse`.

- `generate_until`: the official sampler (`headattr.generate`) in batches of `batch_size` prompts; the
  completion is cut at EOS, then before the first `until` string. Its length is the generation-length setting
  if model_args give one (as the official evaluations fix it), else the request's `max_gen_toks`; for LLaDA
  without a `block_length`, the block is the whole generation. Sampling settings come from model_args; the
  request's `temperature` / `do_sample` are ignored, as in the official evaluations.
- `loglikelihood`: the Monte-Carlo estimate of the continuation's log-likelihood the official evaluations use
  (see `mc_loglikelihood`); for SDAR and LLaDA 2, which publish none, the Monte-Carlo ELBO of their training
  loss (`generation.blocklikelihood`); `is_greedy` is always False (the official Dream evaluation does not
  compute it; LLaDA's is off in its published settings).
- `loglikelihood_rolling`: not supported (a masked diffusion LM has no left-to-right likelihood).

`batch_size` (lm-eval's flag or model_args): prompts per generation call, an integer or `auto` / `auto:N`;
there is no memory probing here, so `auto` (whatever N) means 16, or `max_batch_size` if that is smaller.

Several processes (`torchrun` or `accelerate launch`, which set WORLD_SIZE / RANK / LOCAL_RANK): each joins
`headattr.distributed`'s Gloo group and runs on `cuda:LOCAL_RANK` (see `distributed.device_for`); `rank` and
`world_size` tell lm-eval's evaluator, which gives each rank its share of the documents and gathers the
metrics and logged samples to rank 0 through `gather_object`, the only rank that returns results.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from headattr.engine.gates import batch_gates
from headattr.errors import HeadattrError
from headattr.generation.sampler import LikelihoodLogits
from headattr.generation.sampling import _predictions, completion_text, generate, resolve_settings, sampler_for
from headattr.generation.sparse import SPARSE_ARGS, resolve_sparse, sparse_settings
from headattr.models import ModelSpec, load_model
from headattr.runs import distributed
from headattr.runs.headmask import read_head_mask

AUTO_BATCH_SIZE = 16  # `batch_size=auto`: prompts per generation call (no memory probing)
MODEL_ARGS = (
    "head_mask",
    "fraction",
    "order",
    "random_order",
    "dtype",
    "device",
    "add_bos_token",
    "max_length",
    "seed",
    "mc_num",
    "mc_batch_size",
    "batch_size",
    "max_batch_size",
    "trust_remote_code",
)


def _seed_for(seed: int, *texts: str) -> int:
    """A generator seed from the run's seed and the request's text: the estimate does not depend on order."""
    digest = hashlib.sha256("\x00".join([str(seed), *texts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def generation_batch_size(value: Any, max_batch_size: Any = None) -> int:
    """Prompts per generation call from lm-eval's `batch_size`: an integer (None: 1), or `auto` / `auto:N`.

    lm-eval's `auto:N` re-selects the largest batch that fits N times during a run; this model probes no
    memory, so every `auto` is `AUTO_BATCH_SIZE`, capped by `max_batch_size` when that is given.
    """
    text = "1" if value is None else str(value).strip()
    try:
        if text == "auto" or text.startswith("auto:"):
            float(text[5:] or "1")  # N, the harness's re-selection count: nothing to re-select here
            cap = int(max_batch_size) if max_batch_size else AUTO_BATCH_SIZE
            return max(1, min(AUTO_BATCH_SIZE, cap))
        size = int(text)
    except ValueError:
        raise HeadattrError(f"batch_size {text!r}: use an integer, auto or auto:N") from None
    if size < 1:
        raise HeadattrError(f"batch_size {size}: must be at least 1")
    return size


# ---------------------------------------------------------------- the likelihood estimators


def _plain_logits(
    spec: ModelSpec, noisy: torch.Tensor, seq: torch.Tensor, gates: dict[int, torch.Tensor], lo: int
) -> torch.Tensor:
    """The masked copies' logits [b, T - lo, V] from the model's own pass over them (Dream, LLaDA)."""
    valid = torch.ones_like(noisy, dtype=torch.bool)
    return _predictions(spec, noisy, valid, gates, lo, spec.logit_shift)


def _target_loss(
    spec: ModelSpec,
    seq: torch.Tensor,
    noisy: torch.Tensor,
    weight: torch.Tensor,
    gates: dict[int, torch.Tensor],
    scorer: LikelihoodLogits = _plain_logits,
) -> torch.Tensor:
    """Sum over rows of the masked positions' cross-entropy / their weight (the masking probability; [b, T]
    inputs), the logits from `scorer` (the family's `Sampler.likelihood_logits`)."""
    masked = noisy == spec.mask_token_id
    columns = masked.any(dim=0).nonzero()
    lo = int(columns[0]) if len(columns) else noisy.shape[1] - 1
    # the LM head runs only from the first masked column on ([b, T - lo, V]), not at every position
    logits = scorer(spec, noisy, seq, batch_gates(gates, noisy.shape[0]), lo)
    masked = masked[:, lo:]
    seq = seq[:, lo:]
    weight = weight[:, lo:]
    wide = logits[masked].to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: loss in float32
    nll = F.cross_entropy(wide, seq[masked], reduction="none")
    return (nll / weight[masked]).sum()


@torch.no_grad()
def mc_loglikelihood(
    spec: ModelSpec,
    prompt: Sequence[int],
    target: Sequence[int],
    *,
    mc_num: int = 128,
    batch: int = 32,
    seed: int = 0,
    gates: dict[int, torch.Tensor] | None = None,
) -> float:
    """Monte-Carlo estimate of log p(target | prompt), the official evaluations' estimator for the family.

    Both average, over `mc_num // batch` (at least 1) batches of `batch` masked copies, minus the summed
    cross-entropy of the masked target tokens weighted by 1 / (their masking probability), divided by the
    batch size: an unbiased estimate of the masked-diffusion ELBO. The family's sampler module draws the masked
    copies (`Sampler.likelihood_masks`): LLaDA's mask exact counts spread evenly over 1..L (stratified),
    Dream's mask each token with stratified probabilities. Block-diffusion families (SDAR, LLaDA 2), which
    publish no estimate, use the same average over their training loss: the masked copy beside the clean
    sequence (`Sampler.likelihood_logits`; `generation.blocklikelihood`, docs/generation.md).
    """
    sampler = sampler_for(spec)
    draw, scorer = sampler.likelihood_masks, sampler.likelihood_logits or _plain_logits
    seq = torch.tensor([*prompt, *target], dtype=torch.long)[None].expand(batch, -1).clone()
    gen = torch.Generator().manual_seed(seed)
    gates = {k: v.to(spec.device) for k, v in (gates or {}).items()}
    losses = []
    for _ in range(max(mc_num // batch, 1)):
        noisy, weight = draw(seq, len(prompt), spec.mask_token_id, gen)
        dev = spec.device
        loss = _target_loss(spec, seq.to(dev), noisy.to(dev), weight.to(dev), gates, scorer)
        losses.append(float(loss) / batch)
    return -sum(losses) / len(losses)


# ---------------------------------------------------------------- the lm-eval model


@register_model("headattr")
class HeadattrLM(LM):
    """lm-eval model over `headattr.load_model` and `headattr.generate` (see the module docstring)."""

    def __init__(self, pretrained: str, **kwargs: Any) -> None:
        super().__init__()
        options = {k: kwargs.pop(k) for k in MODEL_ARGS if k in kwargs}
        self.batch_size = generation_batch_size(options.get("batch_size"), options.get("max_batch_size"))
        self.spec = load_model(
            pretrained,
            dtype=str(options.get("dtype", "auto")),
            device=self._join(options.get("device")),
            trust_remote_code=bool(options.get("trust_remote_code", False)),
        )
        self._device = torch.device(self.spec.device)
        sparse = {k: kwargs.pop(k) for k in SPARSE_ARGS if k in kwargs}
        self.sparse = sparse_settings(kwargs.pop("sparse", None), sparse)
        if self.sparse is not None:
            self.sparse = resolve_sparse(self.spec, self.sparse)  # once: a run's scores are read here
        self.settings = dict(kwargs)
        resolve_settings(self.spec, self.settings)  # a wrong-family or bad setting fails here, in one line
        self.sampler = sampler_for(self.spec)
        self.removed = None
        if options.get("head_mask") is not None:
            self.removed = read_head_mask(
                options["head_mask"],
                float(options["fraction"]),
                str(options.get("order", "most")),
                int(options.get("random_order", 0)),
                self.spec,
            )
        self.gates = {}
        if self.removed:
            from headattr.engine.gates import removal_gates

            self.gates = removal_gates(self.spec, self.removed)
        self.add_bos = bool(options.get("add_bos_token", True))
        self.max_length = options.get("max_length")
        self.seed = int(options.get("seed", 1234))
        self.mc_num = int(options.get("mc_num", 128))
        self.mc_batch = int(options.get("mc_batch_size", 32))

    # -------------------------------------------------------------- processes

    def _join(self, device: str | None) -> str | None:
        """This process's device; under torchrun / accelerate launch, also its rank (the Gloo group joined)."""
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = None  # lm-eval's command line may pass "cuda": the CPU when there is no GPU
        self.world = distributed.world_from_env()
        if self.world is None:
            return device
        device = distributed.device_for(self.world, device)
        distributed.init(self.world, device)
        self._rank, self._world_size = self.world.rank, self.world.size
        return device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` concatenated (lm-eval gathers each rank's request count, a 0-d tensor)."""
        return tensor if self.world is None else distributed.all_gather_tensor(tensor, self.world)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's `obj` on rank `dst` (lm-eval gathers metrics and samples to rank 0); None elsewhere."""
        return [obj] if self.world is None else distributed.gather_to_main(obj, self.world, dst)

    def barrier(self) -> None:
        if self.world is not None:
            distributed.barrier()

    # -------------------------------------------------------------- encoding

    def _encode(self, text: str) -> list[int]:
        bos = getattr(self.spec.tokenizer, "bos_token_id", None)
        prefix = [int(bos)] if self.add_bos and bos is not None else []
        return prefix + self.spec.tokenizer.encode(text, add_special_tokens=False)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids; trailing spaces of the context move to the continuation (as both do)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self._encode(context + continuation), self._encode(context)
        target = whole[len(ctx) :]
        if self.sampler.likelihood_eos:
            target = target + [int(self.spec.tokenizer.eos_token_id)]  # as the family's evaluation does
        return ctx, target

    # -------------------------------------------------------------- requests

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            ctx, target = self._pair(context, continuation)
            ll = mc_loglikelihood(
                self.spec,
                ctx,
                target,
                mc_num=self.mc_num,
                batch=self.mc_batch,
                seed=_seed_for(self.seed, context, continuation),
                gates=self.gates,
            )
            out.append((ll, False))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "headattr: loglikelihood_rolling (perplexity tasks) is not supported: a masked diffusion LM has no "
            "left-to-right likelihood; use generation or multiple-choice (loglikelihood) tasks"
        )

    def _length(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Settings of one request: model_args, with the request's max_gen_toks when they fix no length."""
        settings = dict(self.settings)
        if self.sampler.length_setting not in settings:
            settings = self.sampler.with_length(settings, int(gen_kwargs.get("max_gen_toks", 256)))
        return settings

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(self._length(req.args[1]).items())), []).append(i)
        for members in groups.values():
            settings = self._length(requests[members[0]].args[1])
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for i, text in zip(chunk, self._generate(requests, chunk, settings), strict=True):
                    results[i] = text
        return [r if r is not None else "" for r in results]

    def _generate(self, requests: list[Any], chunk: list[int], settings: dict[str, Any]) -> list[str]:
        n = settings[self.sampler.length_setting]
        prompts = [self._encode(requests[i].args[0]) for i in chunk]
        if self.max_length is not None:
            keep = max(1, int(self.max_length) - n)
            prompts = [p[-keep:] for p in prompts]
        ids = generate(self.spec, prompts, gates=self.gates or None, seed=self.seed, sparse=self.sparse, **settings)
        texts = []
        for i, row in zip(chunk, ids, strict=True):
            text = completion_text(self.spec, row[ids.shape[1] - n :])
            until = requests[i].args[1].get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m headattr.lmeval ARGS`: lm-eval's command line, with the `headattr` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    finally:  # the group a torchrun / accelerate launch process joined; on an error, leave without waiting
        distributed.finish(wait=sys.exc_info()[0] is None)
