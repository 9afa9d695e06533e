"""The HTTP gateway: the only package that imports Litestar."""

from .app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
