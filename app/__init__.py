"""The Gradio studio over `grounding.pipeline.GroundedSAM`: `build_demo(registry)` makes the page."""
from app.models import ModelRegistry, registry_from_settings
from app.settings import StudioSettings, parse_settings
from app.studio import Studio
from app.ui import build_demo, launch

__all__ = ["ModelRegistry", "Studio", "StudioSettings", "build_demo", "launch", "parse_settings", "registry_from_settings"]
