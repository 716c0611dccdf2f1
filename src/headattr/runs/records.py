"""What run.json records of an attribution run: samples, settings, library versions, the device."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch

from headattr.data.samples import DataConfig
from headattr.data.tokens import Sample
from headattr.engine.masking import MaskConfig
from headattr.methods import MethodConfig
from headattr.models import ModelSpec
from headattr.runs import rundir


def sample_record(sample: Sample) -> dict[str, Any]:
    return {
        "index": sample.index,
        "hash": sample.uid,
        "group": sample.group,
        "tokens": len(sample.input_ids),
        "prompt_tokens": sample.answer_start,
        "answer_tokens": sample.answer_end - sample.answer_start,
        "prompt_truncated": sample.prompt_truncated,
        "answer_truncated": sample.answer_truncated,
    }


def library_versions() -> dict[str, str]:
    import scipy
    import tokenizers
    import transformers

    from headattr.version import __version__

    return {
        "headattr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def data_config(samples: list[Sample]) -> DataConfig | None:
    """The `DataConfig` every sample was drawn with, or None (samples built by hand, or from several)."""
    sources = {s.source for s in samples}
    return sources.pop() if len(sources) == 1 else None


def run_config(
    spec: ModelSpec,
    samples: list[Sample],
    method: MethodConfig,
    masking: MaskConfig,
    postprocess: str,
    batch_size: int | str,
    seed: int | None = None,
) -> dict[str, Any]:
    """run.json's flat `config`: every settings object's fields under their run.json names."""
    config: dict[str, Any] = {} if seed is None else {"seed": seed}
    data = data_config(samples)
    if data is not None:
        config.update(data.to_meta())
    config.update(method.to_meta())
    config.update(masking.to_meta())
    config.update(postprocess=postprocess, batch_size=batch_size)
    if spec.load_config is not None:
        config.update(spec.load_config.to_meta())
    return config


def device_record(spec: ModelSpec) -> dict[str, Any]:
    """run.json's `device`: its type and name, and whether torch ran deterministic algorithms only
    (`--deterministic`: what makes a GPU run repeat bit for bit, README "A 7B model on a GPU")."""
    device = spec.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"type": device.type, "name": name, "deterministic": torch.are_deterministic_algorithms_enabled()}


def attribution_meta(
    spec: ModelSpec,
    samples: list[Sample],
    config: dict[str, Any],
    masking: MaskConfig,
    data_report: Any,
    extra: dict[str, Any],
    status: str,
) -> dict[str, Any]:
    tok = spec.tokenizer
    return rundir.run_meta(
        status=status,
        config=config,
        model=spec.describe(),
        tokenizer={
            "name_or_path": getattr(tok, "name_or_path", None),
            "class": type(tok).__name__,
            "vocab_size": len(tok) if tok is not None else None,
        },
        samples=[sample_record(s) for s in samples],
        variants=masking.variant_keys(),
        data_report=data_report.to_dict() if hasattr(data_report, "to_dict") else data_report,
        device=device_record(spec),
        versions=library_versions(),
        **extra,
    )
