"""Datasets: records read, selected, tokenized and truncated into samples (`DataConfig`)."""

from headattr.data.samples import DataConfig, Sample, build_samples

__all__ = ["DataConfig", "Sample", "build_samples"]
