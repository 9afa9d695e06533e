# Gunicorn configuration for the gateway: `gunicorn -c config/gunicorn.conf.py`.
# The settings live in the package so `fusion serve` and containers use the same ones.
from fusion_engine.server.gunicorn_conf import *  # noqa: F403
