"""Observability: what the server tells its operator.

``log`` sets up structured logging (structlog through stdlib ``logging``); metrics and per-MAC
boot timelines join it with the network services.
"""
