"""Attribution methods, each a module registering a `MethodConfig` (see `methods.base`)."""

from .ablation import AblationConfig
from .base import METHODS, MethodConfig, SampleAttribution, method_config, method_from_meta, register
from .dispersion import DispersionConfig
from .gate_ig import SCOPES, GateIGConfig
from .gradient import GradientConfig
from .stp import STPConfig

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
