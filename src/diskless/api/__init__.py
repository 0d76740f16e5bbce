"""The admin REST API (FastAPI on uvicorn), on a listener of its own apart from the boot plane.

``service`` (:class:`ApiService`, run by ``diskless serve``), ``app`` (routes), ``auth`` (bearer
tokens), ``errors`` (failures → status codes), ``models`` (bodies), ``stream`` (live boot
events over server-sent events), ``metrics`` (Prometheus), ``bootstrap`` (the first token).
"""

from .bootstrap import bootstrap_token
from .metrics import StatsReader, StatsSample, stats_from_services
from .service import ApiService

__all__ = ["ApiService", "StatsReader", "StatsSample", "bootstrap_token", "stats_from_services"]
