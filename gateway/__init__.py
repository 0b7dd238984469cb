"""Stepgate: a reverse proxy that adds a second factor to chosen routes of an HTTP API."""

from gateway.client import SecondFactorError, StepgateAuth
from gateway.config.load import load_settings
from gateway.config.settings import Settings
from gateway.config.validate import ConfigError
from gateway.http.app import Gateway, create_app

__all__ = ["ConfigError", "Gateway", "SecondFactorError", "Settings", "StepgateAuth",
           "create_app", "load_settings"]
__version__ = "0.1.0"
