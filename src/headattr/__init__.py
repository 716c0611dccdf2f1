"""headattr: Gate-IG attention-head attribution for diffusion language models.

The command line (`headattr ...`) is a thin layer over these functions:

    spec = headattr.load_model(path)                       # Dream, LLaDA or any HF model
    samples, report = headattr.build_samples(data, spec.tokenizer)
    result = headattr.attribute(spec, samples, headattr.GateIGConfig(), headattr.MaskConfig(), out="run")
    headattr.compare(["run-a", "run-b"]);  headattr.prune(spec, headattr.read_run("run"), eval_samples)
    out = headattr.generate(spec, prompt_ids, max_new_tokens=32, steps=32);  headattr.completion_text(spec, out[0])
    headattr.export_run("run", "adaptive-dllm", "head_importance.pt");  headattr.import_head_importance(...)
    headattr.attention_budget("run", rule=headattr.BudgetRule(select=0.3))
"""

from headattr.analysis.comparison import compare
from headattr.analysis.options import CompareSettings
from headattr.analysis.results import Comparison
from headattr.data.samples import DataConfig, build_samples
from headattr.data.tokens import Sample
from headattr.engine.masking import MaskConfig
from headattr.engine.sparse_mask import BudgetRule, block_mask, keep_ratios
from headattr.engine.sparse_schedule import SparseAttention
from headattr.errors import HeadattrError
from headattr.generation.dream import DreamSettings
from headattr.generation.llada import LLaDASettings
from headattr.generation.llada2 import LLaDA2Settings
from headattr.generation.sampling import completion_ids, completion_text, generate
from headattr.generation.sdar import SDARSettings
from headattr.methods import (
    METHODS,
    AblationConfig,
    DispersionConfig,
    GateIGConfig,
    GradientConfig,
    MethodConfig,
    STPConfig,
)
from headattr.methods.aggregate import final_scores, sample_scores
from headattr.models import ModelConfig, ModelSpec, load_model
from headattr.pruning import PruneSettings, prune
from headattr.runs.attribution import Attribution, attribute
from headattr.runs.budget import attention_budget
from headattr.runs.ensembling import ensemble
from headattr.runs.interop import export_run, import_head_importance, load_head_importance
from headattr.runs.rundir import Run, read_run, write_run
from headattr.version import __version__ as __version__

__all__ = [
    "AblationConfig",
    "DispersionConfig",
    "GradientConfig",
    "STPConfig",
    "Attribution",
    "BudgetRule",
    "attention_budget",
    "export_run",
    "import_head_importance",
    "keep_ratios",
    "block_mask",
    "SparseAttention",
    "load_head_importance",
    "Comparison",
    "CompareSettings",
    "DataConfig",
    "DreamSettings",
    "LLaDASettings",
    "LLaDA2Settings",
    "SDARSettings",
    "GateIGConfig",
    "METHODS",
    "MaskConfig",
    "MethodConfig",
    "ModelConfig",
    "ModelSpec",
    "Sample",
    "attribute",
    "build_samples",
    "load_model",
    "prune",
    "PruneSettings",
    "HeadattrError",
    "Run",
    "compare",
    "ensemble",
    "generate",
    "completion_ids",
    "completion_text",
    "final_scores",
    "read_run",
    "sample_scores",
    "write_run",
]
