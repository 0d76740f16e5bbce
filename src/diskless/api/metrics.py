"""Prometheus metrics of ``GET /metrics``: service counters, boot events, machines.

Each API app has its own :class:`CollectorRegistry` (no process-wide state, so tests can run
several servers). Three sources feed it:

* the services' own stats objects, read at scrape time through a :data:`StatsReader`
  (:func:`stats_from_services` builds one for ``diskless serve``): DHCP and TFTP counters, the
  HTTP boot plane's requests by route kind, responses by status class, bytes and scripts, the
  iSCSI portal's counters, open sessions and exported disks (summed over the worker processes,
  which report theirs to the main process once a second);
* the boot timeline: ``diskless_boot_events_total{stage}``, counted as events are recorded;
* the inventory: machines known (from the snapshot) and discovered MACs waiting for approval,
  and each known machine's latest boot stage this run (one series per machine, so bounded by
  the inventory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.dhcp.endpoint import DhcpService
from diskless.exports.endpoint import IscsiService
from diskless.http.service import HttpBootService
from diskless.tftp.endpoint import TftpService

__all__ = ["ApiMetrics", "StatsReader", "StatsSample", "stats_from_services"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class StatsSample:
    """Service counters and gauges at one instant, by metric name without ``diskless_``."""

    counters: Mapping[str, int] = field(default_factory=dict)
    """Running totals, e.g. ``dhcp_offers`` (exposed as ``diskless_dhcp_offers_total``)."""
    gauges: Mapping[str, float] = field(default_factory=dict)
    """Current values, e.g. ``iscsi_sessions``."""
    labelled: Mapping[str, tuple[str, Mapping[str, int]]] = field(default_factory=dict)
    """Running totals split by one label: ``http_requests`` → ``("route", {"script": 3})``
    (exposed as ``diskless_http_requests_total{route="script"}``)."""


StatsReader = Callable[[], StatsSample]


def stats_from_services(services: Sequence[object]) -> StatsReader:
    """A reader of the stats objects of the DHCP, TFTP, HTTP and iSCSI services among
    ``services``."""

    def read() -> StatsSample:
        counters: dict[str, int] = {}
        gauges: dict[str, float] = {}
        labelled: dict[str, tuple[str, Mapping[str, int]]] = {}
        for service in services:
            if isinstance(service, DhcpService) and service.stats is not None:
                counters.update({f"dhcp_{k}": v for k, v in asdict(service.stats).items()})
            elif isinstance(service, TftpService):
                counters.update({f"tftp_{k}": v for k, v in service.counters().items()})
            elif isinstance(service, HttpBootService):
                http = service.stats
                counters.update({f"http_{k}": v for k, v in http.as_dict().items()})
                labelled["http_requests"] = ("route", dict(http.requests))
                labelled["http_responses"] = ("status", dict(http.responses))
            elif isinstance(service, IscsiService):
                portal = service.portal_stats()
                if portal is not None:
                    stats, sessions, exported = portal
                    counters.update({f"iscsi_{k}": v for k, v in asdict(stats).items()})
                    gauges["iscsi_sessions"] = sessions
                    gauges["iscsi_exported_disks"] = exported
        return StatsSample(counters, gauges, labelled)

    return read


class _ServiceCollector(Collector):
    def __init__(self, read: StatsReader) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        sample = self._read()
        for name, value in sorted(sample.counters.items()):
            service, _, what = name.partition("_")
            yield CounterMetricFamily(
                f"diskless_{name}", f"{service.upper()} {what.replace('_', ' ')}", value=value
            )
        for name, (label, values) in sorted(sample.labelled.items()):
            service, _, what = name.partition("_")
            family = CounterMetricFamily(
                f"diskless_{name}",
                f"{service.upper()} {what.replace('_', ' ')} by {label}",
                labels=[label],
            )
            for value_label, value in sorted(values.items()):
                family.add_metric([value_label], value)
            yield family
        for name, gauge in sorted(sample.gauges.items()):
            service, _, what = name.partition("_")
            yield GaugeMetricFamily(
                f"diskless_{name}", f"{service.upper()} {what.replace('_', ' ')}", value=gauge
            )


class ApiMetrics:
    """The registry behind ``/metrics`` and the metrics the API keeps itself."""

    def __init__(self, timeline: BootTimeline, stats: StatsReader | None = None) -> None:
        self.registry = CollectorRegistry()
        self.boot_events = Counter(
            "diskless_boot_events",
            "Boot events recorded since start, by stage",
            ["stage"],
            registry=self.registry,
        )
        for stage in BootStage:
            self.boot_events.labels(stage.value)
        self.machines = Gauge(
            "diskless_machines", "Machines in the inventory snapshot", registry=self.registry
        )
        self.discovered = Gauge(
            "diskless_discovered_macs",
            "Unknown MACs that asked to boot, waiting for approval",
            registry=self.registry,
        )
        self.last_seen = Gauge(
            "diskless_machine_last_seen_timestamp_seconds",
            "When each machine last did a boot step (Unix time)",
            ["mac", "hostname"],
            registry=self.registry,
        )
        self.boot_stage = Gauge(
            "diskless_machine_boot_stage",
            "1 for each known machine's latest boot stage since the server started",
            ["mac", "hostname", "stage"],
            registry=self.registry,
        )
        self.event_clients = Gauge(
            "diskless_api_event_clients",
            "Clients following the live boot events (GET /events)",
            registry=self.registry,
        )
        if stats is not None:
            self.registry.register(_ServiceCollector(stats))
        timeline.subscribe(self._count)

    def _count(self, event: BootEvent) -> None:
        self.boot_events.labels(event.stage.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
