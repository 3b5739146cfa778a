"""Prometheus metrics at /metrics (prometheus-client).

One CollectorRegistry per app (tests run several apps in one process). Counters and
histograms are updated where things happen (HTTP middleware, blocking waits); the state
of live streams is read when Prometheus scrapes, by a collector walking the app's
objects, so the media path pays nothing for it.

Ingest bitrate is a byte counter per stream (`rate(sfstream_ingest_bytes_total[30s]) * 8`).
"""
from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .logs import route_template

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "sfstream_http_requests", "HTTP requests answered, by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.http_latency = Histogram(
            "sfstream_http_request_duration_seconds", "Time to answer an HTTP request (blocking HLS waits included)",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.blocking_wait = Histogram(
            "sfstream_hls_blocking_wait_seconds", "How long blocking playlist reloads and held part requests waited",
            ["kind"], buckets=WAIT_BUCKETS, registry=self.registry)

    def add_state(self, collect) -> None:
        """`collect()` yields metric families describing live state, at scrape time."""
        self.registry.register(_StateCollector(collect))


class _StateCollector:
    def __init__(self, collect) -> None:
        self._collect = collect

    def describe(self):
        return []  # families vary with what is live; nothing to check at registration

    def collect(self):
        yield from self._collect()


def app_state(app: web.Application, *, registry_key, rtmp_key, hls_key, broadcasts_key, sockets_key, store_key):
    """A collect() for the app's live state (the app's keys are passed in: no import cycles)."""

    def collect():
        live = app[registry_key].streams
        rtmp = app[rtmp_key]
        hls = app[hls_key]
        broadcasts = app[broadcasts_key]
        yield _gauge("sfstream_live_streams", "Streams being published now", len(live))
        publishers = sum(1 for s in rtmp.sessions if s.live is not None)
        yield _gauge("sfstream_publishers", "RTMP connections publishing now", publishers)
        yield _gauge("sfstream_rtmp_connections", "RTMP connections open", len(rtmp.sessions))
        ingest = CounterMetricFamily("sfstream_ingest_bytes", "Media bytes received per live stream", labels=["stream"])
        dropped = CounterMetricFamily("sfstream_frames_dropped", "Video frames the ladder dropped (overload)",
                                      labels=["stream"])
        for name, s in live.items():
            ingest.add_metric([name], s.bytes_in)
            dropped.add_metric([name], sum(getattr(c, "dropped_packets", 0) for c in s.consumers))
        yield ingest
        yield dropped
        viewers = GaugeMetricFamily("sfstream_viewers", "Viewers of each live stream (last sample)", labels=["stream"])
        for name, b in broadcasts.by_name.items():
            if not b.ended:
                viewers.add_metric([name], b.viewers)
        yield viewers
        parts = CounterMetricFamily("sfstream_hls_parts", "LL-HLS parts produced", labels=["stream", "rendition"])
        rtf = GaugeMetricFamily("sfstream_transcode_realtime_factor",
                                "Media seconds a rung encoded per wall second, recent (1.0: keeping up)",
                                labels=["stream", "rung"])
        lag = GaugeMetricFamily("sfstream_transcode_lag_seconds", "Arrival to encoded output of a rung's frames",
                                labels=["stream", "rung"])
        active = GaugeMetricFamily("sfstream_transcode_rung_active", "1 while a rung is encoded, 0 while shed",
                                   labels=["stream", "rung"])
        for name, stream in hls.streams.items():
            for r in stream.renditions.values():
                parts.add_metric([name, r.name], r.segmenter.parts_produced)
        for name, s in live.items():
            for c in s.consumers:
                for rung, stats in getattr(c, "rung_stats", lambda: {})().items():
                    rtf.add_metric([name, rung], stats["realtime_factor"])
                    lag.add_metric([name, rung], stats["lag"])
                    active.add_metric([name, rung], 1 if stats["active"] else 0)
        yield parts
        yield rtf
        yield lag
        yield active
        sockets = app.get(sockets_key)
        yield _gauge("sfstream_websocket_connections", "Viewer-count websockets open",
                     sockets.connections if sockets else 0)
        store = app.get(store_key)
        if store is not None:
            size, used = store.pool_stats()
            yield _gauge("sfstream_db_pool_connections", "Database connections open", size)
            yield _gauge("sfstream_db_pool_in_use", "Database connections in use", used)

    return collect


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def measure(request: web.Request, handler):
    """Count and time every request, by route template."""
    metrics = request.app[METRICS]
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        template = route_template(request)
        metrics.http_requests.labels(template, request.method, str(status)).inc()
        if status != 101:  # a websocket's lifetime is no request latency
            metrics.http_latency.labels(template, request.method).observe(time.perf_counter() - start)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
