"""Fusion Engine: ask a panel of LLMs, have a judge fuse one better answer.

>>> async with FusionEngine() as engine:
...     result = await engine.fuse("Why is the sky blue?", panel="budget")
...     print(result.answer)
"""

from .engine import FusionEngine
from .errors import FusionError
from .panels import Panel, PanelMember, load_panels
from .protocol import GenerationParams
from .results import FusionResult, PanelResponse

__all__ = [
    "FusionEngine",
    "FusionError",
    "FusionResult",
    "GenerationParams",
    "Panel",
    "PanelMember",
    "PanelResponse",
    "load_panels",
]
__version__ = "0.1.0"
