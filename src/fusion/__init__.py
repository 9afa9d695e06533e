"""The old import name: ``from fusion import FusionEngine`` keeps working."""

from fusion_engine import (
    FusionEngine,
    FusionError,
    FusionResult,
    GenerationParams,
    Panel,
    PanelMember,
    PanelResponse,
    __version__,
    load_panels,
)

__all__ = [
    "FusionEngine",
    "FusionError",
    "FusionResult",
    "GenerationParams",
    "Panel",
    "PanelMember",
    "PanelResponse",
    "__version__",
    "load_panels",
]
