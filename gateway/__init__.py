"""Stepgate: a reverse proxy that adds a second factor to chosen routes of an HTTP API."""

from .app import Gateway, create_app
from .client import SecondFactorError, StepgateAuth
from .config import Settings, load_settings
from .validate import ConfigError

__all__ = ["ConfigError", "Gateway", "SecondFactorError", "Settings", "StepgateAuth",
           "create_app", "load_settings"]
__version__ = "0.1.0"
