"""The judge's input from live metrics: one `TrackWindow` per track of a rolling service.

For a service behind the gateway, traffic, errors, weights and the gateway's view of
each track's endpoints come from the gateway's series (what users of the routes got,
whatever happened behind); latency points from the service's own server histograms, one
point per (instance, sub-window, quantile), as Kayenta compares series points rather
than raw requests. For a queue consumer (fulfillment), which no router splits, the
service's own series say it all: its deliveries by outcome per track (a failed or
dead-lettered delivery is its error), and latency points from its batch histogram (a
batch's duration is how long each of its deliveries took to settle).

Two sources give the same windows: Prometheus' HTTP API when the stack runs one, or
scrapes of every gateway replica's and every instance's `/metrics` kept by the caller
(`ScrapeHistory`) when none runs.
"""

from __future__ import annotations

import itertools
import math
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from yardarm.red import QUIET_ROUTES, histogram_quantile
from yardarm.rollout.window import TrackWindow

QUANTILES = (0.5, 0.9)
BREAKER_OPEN = 2.0
# How long the gateway must have kept a track's endpoint from traffic for the judge to
# call the track unavailable (a few health-check intervals and sub-windows).
UNAVAILABLE_FOR_S = 5.0
REQUESTS = "yardarm_gateway_route_requests_total"
SERVER = "http_server_request_duration_seconds"
DELIVERIES = "yardarm_consumer_messages_total"
BATCHES = "yardarm_consumer_batch_duration_seconds"
FAILED_DELIVERIES = ("failed", "dead_lettered")


@dataclass(frozen=True)
class Subject:
    """What is rolling: a service behind the gateway and its routes, or a queue consumer
    (no routes), and the tracks judged."""

    upstream: str  # the service
    routes: tuple[str, ...]  # its gateway routes; none for a queue consumer
    tracks: tuple[str, ...] = ("canary", "baseline")

    @property
    def consumer(self) -> bool:
        return not self.routes

    @property
    def latency(self) -> str:
        """The histogram latency points come from."""
        return BATCHES if self.consumer else SERVER


def _route_matcher(subject: Subject) -> str:
    return "|".join(subject.routes)


def _windows(
    subject: Subject,
    requests: Mapping[str, float],
    errors: Mapping[str, float],
    weights: Mapping[str, float],
    points: Mapping[str, list[float]],
    unavailable: Mapping[str, list[str]],
) -> dict[str, TrackWindow]:
    total = sum(requests.values())
    return {
        track: TrackWindow(
            track=track,
            requests=round(requests.get(track, 0.0)),
            errors=round(errors.get(track, 0.0)),
            latency_points=tuple(points.get(track, [])),
            weight=weights.get(track, 0.0),
            share=100.0 * requests.get(track, 0.0) / total if total > 0 else 0.0,
            route_requests=round(total),
            unavailable=tuple(sorted(unavailable.get(track, []))),
        )
        for track in subject.tracks
    }


# -- Prometheus ----------------------------------------------------------------------


class PrometheusSource:
    """Windows from Prometheus' HTTP API (instant queries at the window's end, range
    queries for the latency points)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, object]]:
        response = self._client.get(f"{self._base}{path}", params=params)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {params.get('query')!r}: {body}")
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def _by(self, expr: str, label: str, at: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}):
            metric = item["metric"]
            value = item["value"]
            assert isinstance(metric, dict) and isinstance(value, list)
            number = float(value[1])
            if not math.isnan(number):
                out[str(metric.get(label, ""))] = number
        return out

    def windows(
        self, subject: Subject, start: float, end: float, sub_window_s: float
    ) -> dict[str, TrackWindow]:
        """Each judged track over [start, end] (Unix seconds)."""
        span = f"{max(1, round(end - start))}s"
        weights: dict[str, float] = {}
        if subject.consumer:
            # A consumer's deliveries by track; its weights come from its instance counts.
            own = f'service="{subject.upstream}"'
            failed = "|".join(FAILED_DELIVERIES)
            requests = self._by(
                f"sum by (track) (increase({DELIVERIES}{{{own}}}[{span}]))", "track", end
            )
            errors = self._by(
                f'sum by (track) (increase({DELIVERIES}{{{own},outcome=~"{failed}"}}[{span}]))',
                "track",
                end,
            )
        else:
            routes = f'route=~"{_route_matcher(subject)}"'
            by_track = "sum by (upstream_track)"
            requests = self._by(
                f"{by_track} (increase({REQUESTS}{{{routes}}}[{span}]))", "upstream_track", end
            )
            errors = self._by(
                f'{by_track} (increase({REQUESTS}{{{routes},code=~"5.."}}[{span}]))',
                "upstream_track",
                end,
            )
            weights = self._by(
                "avg by (upstream_track) (max by (route, upstream_track) "
                f"(yardarm_gateway_route_weight{{{routes}}}))",
                "upstream_track",
                end,
            )
        points: dict[str, list[float]] = defaultdict(list)
        quiet = "|".join(QUIET_ROUTES)
        step = f"{max(1, round(sub_window_s))}s"
        for track in subject.tracks:
            selector = f'{subject.latency}_bucket{{service="{subject.upstream}",track="{track}"'
            selector += "}" if subject.consumer else f',http_route!~"{quiet}"}}'
            for q in QUANTILES:
                expr = f"histogram_quantile({q}, sum by (instance, le) (rate({selector}[{step}])))"
                series = self._get(
                    "/api/v1/query_range",
                    {
                        "query": expr,
                        "start": f"{start + sub_window_s:.3f}",
                        "end": f"{end:.3f}",
                        "step": step,
                    },
                )
                for item in series:
                    values = item["values"]
                    assert isinstance(values, list)
                    points[track].extend(float(v[1]) for v in values if math.isfinite(float(v[1])))
        hidden: dict[str, list[str]] = {}
        if not subject.consumer:  # a consumer has no router to hide it
            since = max(start, end - UNAVAILABLE_FOR_S)
            hidden = sustained(self._unavailable(subject, end), self._unavailable(subject, since))
        return _windows(subject, requests, errors, weights, points, hidden)

    def _unavailable(self, subject: Subject, at: float) -> dict[str, list[str]]:
        upstream = f'upstream="{subject.upstream}"'
        healthy: dict[str, tuple[str, float]] = {}
        for item in self._get(
            "/api/v1/query",
            {"query": f"min by (endpoint, upstream_track) "
             f"(yardarm_gateway_endpoint_healthy{{{upstream}}})", "time": f"{at:.3f}"},
        ):  # fmt: skip
            metric, value = item["metric"], item["value"]
            assert isinstance(metric, dict) and isinstance(value, list)
            healthy[str(metric["endpoint"])] = (str(metric["upstream_track"]), float(value[1]))
        ejected = self._by(
            f"max by (endpoint) (yardarm_gateway_endpoint_ejected{{{upstream}}})", "endpoint", at
        )
        breakers = self._by(
            f'max by (breaker) (yardarm_gateway_breaker_state{{breaker=~"{subject.upstream}/.*"}})',
            "breaker",
            at,
        )
        return unavailable(subject.upstream, healthy, ejected, breakers)


def unavailable(
    upstream: str,
    healthy: Mapping[str, tuple[str, float]],
    ejected: Mapping[str, float],
    breakers: Mapping[str, float],
) -> dict[str, list[str]]:
    """Per track, every endpoint the gateway keeps from traffic (failing health checks,
    ejected) and every open circuit, from the gateway's gauges: `healthy` maps endpoint
    to (track, 1 or 0), `ejected` endpoint to 1 or 0, `breakers` breaker name to state."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for endpoint, (track, value) in healthy.items():
        if value < 1:
            reasons[track].append(f"{endpoint} fails its health checks")
    for endpoint, value in ejected.items():
        if value >= 1 and endpoint in healthy:
            reasons[healthy[endpoint][0]].append(f"{endpoint} is ejected")
    tracks = {endpoint: track for endpoint, (track, _) in healthy.items()}
    for breaker, state in breakers.items():
        guarded = _breaker_track(upstream, breaker, tracks)
        if state >= BREAKER_OPEN and guarded is not None:
            reasons[guarded].append(f"circuit {breaker} is open")
    return reasons


def sustained(
    now: Mapping[str, list[str]], before: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """The reasons that held both `UNAVAILABLE_FOR_S` ago and now: a health check that
    timed out twice on a busy machine, then passed, hides a canary for a moment, not a
    release that keeps failing (its breaker stays open, its ejection lasts)."""
    return {
        track: kept
        for track, reasons in now.items()
        if (kept := [r for r in reasons if r in before.get(track, [])])
    }


def _breaker_track(upstream: str, breaker: str, tracks: Mapping[str, str]) -> str | None:
    """The track a breaker guards: `orders/track:canary`, or `orders/<endpoint url>`."""
    name = breaker.removeprefix(f"{upstream}/")
    if name.startswith("track:"):
        return name.removeprefix("track:")
    return tracks.get(name)


# -- direct scrapes ------------------------------------------------------------------


@dataclass
class Scrape:
    """What every gateway replica and every instance exposed at one moment, reduced to
    what windows need."""

    at: float  # Unix seconds
    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    weights: dict[tuple[str, str], float] = field(default_factory=dict)  # (route, track)
    healthy: dict[str, tuple[str, float]] = field(default_factory=dict)  # endpoint
    ejected: dict[str, float] = field(default_factory=dict)
    breakers: dict[str, float] = field(default_factory=dict)
    # (track, instance) -> cumulative buckets
    buckets: dict[tuple[str, str], dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )


def reduce_exposition(text: str, subject: Subject, scrape: Scrape) -> None:
    """Add one target's exposition to `scrape` (gateway and service series alike)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if subject.consumer:
                _reduce_consumer(s.name, labels, s.value, subject, scrape)
            elif s.name == REQUESTS and labels.get("route") in subject.routes:
                track = labels.get("upstream_track", "")
                scrape.requests[track] += s.value
                if labels.get("code", "").startswith("5"):
                    scrape.errors[track] += s.value
            elif s.name == "yardarm_gateway_route_weight" and labels.get("route") in subject.routes:
                key = (labels["route"], labels.get("upstream_track", ""))
                scrape.weights[key] = max(scrape.weights.get(key, 0.0), s.value)
            elif labels.get("upstream") == subject.upstream and s.name in (
                "yardarm_gateway_endpoint_healthy",
                "yardarm_gateway_endpoint_ejected",
            ):
                endpoint = labels["endpoint"]
                if s.name.endswith("_healthy"):
                    track = labels.get("upstream_track", "")
                    old = scrape.healthy.get(endpoint, (track, 1.0))[1]
                    scrape.healthy[endpoint] = (track, min(old, s.value))
                else:
                    scrape.ejected[endpoint] = max(scrape.ejected.get(endpoint, 0.0), s.value)
            elif s.name == "yardarm_gateway_breaker_state" and labels.get("breaker", "").startswith(
                f"{subject.upstream}/"
            ):
                breaker = labels["breaker"]
                scrape.breakers[breaker] = max(scrape.breakers.get(breaker, 0.0), s.value)
            elif (
                s.name == f"{SERVER}_bucket"
                and labels.get("service") == subject.upstream
                and labels.get("track") in subject.tracks
                and labels.get("http_route") not in QUIET_ROUTES
            ):
                key = (labels["track"], labels.get("instance", ""))
                scrape.buckets[key][float(labels["le"])] += s.value


def _reduce_consumer(
    name: str, labels: Mapping[str, str], value: float, subject: Subject, scrape: Scrape
) -> None:
    """One sample of a consumer's own series: deliveries by outcome, batch buckets."""
    if labels.get("service") != subject.upstream:
        return
    track = labels.get("track", "")
    if name == DELIVERIES:
        scrape.requests[track] += value
        if labels.get("outcome") in FAILED_DELIVERIES:
            scrape.errors[track] += value
    elif name == f"{BATCHES}_bucket" and track in subject.tracks:
        scrape.buckets[(track, labels.get("instance", ""))][float(labels["le"])] += value


def _delta(later: Mapping[str, float], earlier: Mapping[str, float]) -> dict[str, float]:
    """Counter increases; a reset (a restarted replica) counts from zero."""
    out = {}
    for key, now in later.items():
        before = earlier.get(key, 0.0)
        out[key] = now - before if now >= before else now
    return out


def windows_between(
    subject: Subject, scrapes: Sequence[Scrape], start: float, end: float
) -> dict[str, TrackWindow]:
    """Windows over the scrapes taken in [start, end], consecutive pairs being the
    sub-windows of the latency points."""
    inside = [s for s in scrapes if start <= s.at <= end]
    if len(inside) < 2:
        return _windows(subject, {}, {}, {}, {}, {})
    first, last = inside[0], inside[-1]
    requests = _delta(last.requests, first.requests)
    errors = _delta(last.errors, first.errors)
    weights: dict[str, list[float]] = defaultdict(list)
    for (_, track), value in last.weights.items():
        weights[track].append(value)
    points: dict[str, list[float]] = defaultdict(list)
    for earlier, later in itertools.pairwise(inside):
        for key, buckets in later.buckets.items():
            before = earlier.buckets.get(key, {})
            delta = {le: n - before.get(le, 0.0) for le, n in buckets.items()}
            if any(d < 0 for d in delta.values()):
                delta = dict(buckets)
            for q in QUANTILES:
                point = histogram_quantile(q, delta)
                if point is not None:
                    points[key[0]].append(point)
    since = [s for s in inside if s.at <= end - UNAVAILABLE_FOR_S] or inside[:1]
    reasons = sustained(
        unavailable(subject.upstream, last.healthy, last.ejected, last.breakers),
        unavailable(subject.upstream, since[-1].healthy, since[-1].ejected, since[-1].breakers),
    )
    return _windows(
        subject,
        requests,
        errors,
        {track: sum(v) / len(v) for track, v in weights.items()},
        points,
        reasons,
    )


class ScrapeHistory:
    """Scrapes the gateway replicas' and the instances' `/metrics` when asked (every
    sub-window, by the controller) and keeps the recent ones."""

    def __init__(
        self,
        subject: Subject,
        urls: Iterable[str],
        verify: ssl.SSLContext | bool = True,
        keep_s: float = 900.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.subject = subject
        self.urls = list(urls)
        self.scrapes: list[Scrape] = []
        self._keep_s = keep_s
        self._client = httpx.Client(verify=verify, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def scrape(self, now: float | None = None) -> Scrape:
        scrape = Scrape(at=time.time() if now is None else now)
        for url in self.urls:
            try:
                response = self._client.get(f"{url}/metrics")
            except httpx.HTTPError:
                continue  # restarting or gone: its counters resume from the next scrape
            if response.status_code == 200:
                reduce_exposition(response.text, self.subject, scrape)
        self.scrapes.append(scrape)
        horizon = scrape.at - self._keep_s
        self.scrapes = [s for s in self.scrapes if s.at >= horizon]
        return scrape

    def windows(self, start: float, end: float) -> dict[str, TrackWindow]:
        return windows_between(self.subject, self.scrapes, start, end)
