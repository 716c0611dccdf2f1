"""Attribution methods, each a module registering a `MethodConfig` (see `methods.base`)."""

from headattr.methods.ablation import AblationConfig
from headattr.methods.base import METHODS, MethodConfig, SampleAttribution, method_config, method_from_meta, register
from headattr.methods.dispersion import DispersionConfig
from headattr.methods.gate_ig import SCOPES, GateIGConfig
from headattr.methods.gradient import GradientConfig
from headattr.methods.stp import STPConfig

NAMES = ("gate-ig", "stp", "gradient", "ablation", "dispersion")  # the order help texts and reports list them

__all__ = [
    "METHODS",
    "NAMES",
    "SCOPES",
    "AblationConfig",
    "DispersionConfig",
    "GateIGConfig",
    "GradientConfig",
    "MethodConfig",
    "STPConfig",
    "SampleAttribution",
    "method_config",
    "method_from_meta",
    "register",
]
