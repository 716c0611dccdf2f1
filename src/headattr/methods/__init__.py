"""Attribution methods, each a module registering a `MethodConfig` (see `methods.base`)."""

from .base import METHODS, MethodConfig, SampleAttribution, method_config, method_from_meta, register
from .gate_ig import SCOPES, GateIGConfig

__all__ = [
    "METHODS",
    "SCOPES",
    "GateIGConfig",
    "MethodConfig",
    "SampleAttribution",
    "method_config",
    "method_from_meta",
    "register",
]
