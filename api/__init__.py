"""Raiox's HTTP API (installed as raiox_api): a thin FastAPI door over raiox_core, like the CLI and the dashboard."""

from .app import create_app

__all__ = ["create_app"]
