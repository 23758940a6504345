"""What every yardarm dashboard shares: datasources, template variables, the label
matchers every query carries, PromQL helpers and panel builders.

Every Prometheus selector is narrowed by the dashboard's variables (`=~"$var"`, so a
multi-value or "All" selection works) and uses only the variables Grafana and the live
query test both know; the catalog test in tests/observability checks that, and that
every metric and label exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import logs, loki, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability import stack

PROMETHEUS: Final = dm.DataSourceRef(type_val="prometheus", uid=stack.PROMETHEUS_UID)
LOKI: Final = dm.DataSourceRef(type_val="loki", uid=stack.LOKI_UID)

# Every dashboard links to the others through this tag.
TAG: Final = "yardarm"

# The kit's operational endpoints: probes and scrapes, not user traffic.
OPERATIONAL_ROUTES: Final = "/healthz|/readyz|/metrics|/openapi.json"
USER_TRAFFIC: Final = f'http_route!~"{OPERATIONAL_ROUTES}"'
SERVER_ERROR: Final = 'http_response_status_code=~"5.."'

# The series the variables read their values from: every service serves HTTP (its
# probes and /metrics at least), so this histogram names every service, version and track.
_VARIABLE_SOURCE: Final = "http_server_request_duration_seconds_count"

Panel = Builder[dm.Panel]


@dataclass(frozen=True)
class Scope:
    """The label matchers of one dashboard's queries: a pinned service (a service's own
    dashboard) or the `$service` variable, always narrowed by `$environment`,
    `$version` and `$track`."""

    service: str | None = None

    def matchers(self, *extra: str) -> str:
        service = f'service="{self.service}"' if self.service else 'service=~"$service"'
        return ", ".join(
            (
                f'{stack.ENVIRONMENT_LABEL}=~"$environment"',
                service,
                'version=~"$version"',
                'track=~"$track"',
                *extra,
            )
        )

    def __call__(self, series: str, *extra: str) -> str:
        """A selector of `series` in this scope, with `extra` matchers."""
        return f"{series}{{{self.matchers(*extra)}}}"


# PromQL helpers. Windows are always `$__rate_interval`, which Grafana keeps at least four
# scrape intervals wide, so a rate never falls between two samples.


def rate(selector: str) -> str:
    return f"rate({selector}[$__rate_interval])"


def increase(selector: str) -> str:
    return f"increase({selector}[$__rate_interval])"


def agg(op: str, labels: Sequence[str], expr: str) -> str:
    """`op by (labels) (expr)`, or `op (expr)` without labels."""
    return f"{op} by ({', '.join(labels)}) ({expr})" if labels else f"{op} ({expr})"


def sum_rate(labels: Sequence[str], selector: str) -> str:
    return agg("sum", labels, rate(selector))


def sum_increase(labels: Sequence[str], selector: str) -> str:
    return agg("sum", labels, increase(selector))


def ratio(part: str, whole: str) -> str:
    """`part / whole`, 0 (not "no data") where `whole` has series that `part` lacks: a
    route without a single 5xx has an error ratio of 0, not an empty panel."""
    return f"({part} or {whole} * 0) / {whole}"


def quantile(q: float, bucket_selector: str, labels: Sequence[str]) -> str:
    """The q-quantile of a histogram's `_bucket` selector, per `labels`."""
    return f"histogram_quantile({q}, {agg('sum', ('le', *labels), rate(bucket_selector))})"


@dataclass(frozen=True)
class Query:
    """One Prometheus target of a panel."""

    expr: str
    legend: str
    exemplar: bool = False

    def build(self, ref_id: str) -> prometheus.Dataquery:
        target = (
            prometheus.Dataquery()
            .ref_id(ref_id)
            .datasource(PROMETHEUS)
            .expr(self.expr)
            .legend_format(self.legend)
            .range()
        )
        return target.exemplar(True) if self.exemplar else target


def _ref(index: int) -> str:
    return chr(ord("A") + index)


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.LIST)
        .placement(common_models.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _tooltip() -> common_builders.VizTooltipOptions:
    return (
        common_builders.VizTooltipOptions()
        .mode(common_models.TooltipDisplayMode.MULTI)
        .sort(common_models.SortOrder.DESCENDING)
    )


def graph(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    max_value: float | None = None,
    steps: bool = False,
) -> Panel:
    """A time series panel; `stacked` for parts of a whole, `steps` for gauges that
    jump (indexes, terms, counts of things)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .legend(_legend())
        .tooltip(_tooltip())
        .fill_opacity(10)
    )
    for index, query in enumerate(queries):
        panel = panel.with_target(query.build(_ref(index)))
    if max_value is not None:
        panel = panel.max(max_value)
    if stacked:
        panel = panel.stacking(
            common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL)
        )
    if steps:
        panel = panel.line_interpolation(common_models.LineInterpolation.STEP_AFTER)
    return panel


def latency(
    title: str,
    description: str,
    bucket_selector: str,
    labels: Sequence[str],
    legend: str,
    *,
    quantiles: Sequence[float] = (0.5, 0.99),
    unit: str = "s",
    width: int = 12,
    height: int = 8,
) -> Panel:
    """Quantiles of a histogram, with exemplars: each dot is one traced observation,
    and the Prometheus datasource links its `trace_id` to Jaeger."""
    queries = [
        Query(
            quantile(q, bucket_selector, labels),
            f"p{round(q * 100):d} {legend}".rstrip(),
            exemplar=True,
        )
        for q in quantiles
    ]
    return graph(title, description, unit, queries, width=width, height=height)


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from -infinity)."""
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def single(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    width: int = 6,
    height: int = 4,
    colours: dashboard_builders.ThresholdsConfig | None = None,
    mappings: Sequence[dm.ValueMapping] = (),
) -> Panel:
    """A stat panel: one number (per series) now, with its recent trend."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .with_target(query.build("A"))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .thresholds(colours or thresholds((None, "green")))
    )
    if mappings:
        panel = panel.mappings(list(mappings))
    return panel


def states(
    title: str,
    description: str,
    query: Query,
    mappings: Sequence[tuple[str, str, str]],
    *,
    width: int = 12,
    height: int = 8,
) -> Panel:
    """A state timeline: which state each series was in, over time. `mappings` are
    (value, text, colour)."""
    value_map = dm.ValueMap(
        options={
            value: dm.ValueMappingResult(text=text, color=colour, index=index)
            for index, (value, text, colour) in enumerate(mappings)
        }
    )
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .span(width)
        .height(height)
        .with_target(query.build("A"))
        .mappings([value_map])
        .show_value(common_models.VisibilityMode.NEVER)
        .fill_opacity(70)
        .line_width(0)
        .legend(_legend())
        .tooltip(_tooltip())
        .thresholds(thresholds((None, "text")))
    )


def error_logs(service: str, *, height: int = 10) -> Panel:
    """The service's error log lines from Loki; each line's `trace_id` (structured
    metadata) opens its trace through the Loki datasource's derived field."""
    return (
        logs.Panel()
        .title(f"{service}: error logs")
        .description(
            f"Which errors did {service} log? Lines at ERROR or CRITICAL from every "
            f"{service} instance, newest first; expand a line for its trace_id."
        )
        .datasource(LOKI)
        .span(24)
        .height(height)
        .with_target(
            loki.Dataquery()
            .ref_id("A")
            .datasource(LOKI)
            .expr(stack.loki_error_logs(service))
            .query_type("range")
        )
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .sort_order(common_models.LogsSortOrder.DESCENDING)
        .dedup_strategy(common_models.LogsDedupStrategy.NONE)
    )


# Variables.


def _variable(name: str, label: str, query: str, description: str) -> Builder[dm.VariableModel]:
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(PROMETHEUS)
        .query(query)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def variables(service: str | None) -> list[Builder[dm.VariableModel]]:
    """environment, service (unless the dashboard is one service's), version, track:
    each narrows the next."""
    env = f'{stack.ENVIRONMENT_LABEL}=~"$environment"'
    pinned = f'service="{service}"' if service else 'service=~"$service"'
    found = [
        _variable(
            "environment",
            "Environment",
            f"label_values({_VARIABLE_SOURCE}, {stack.ENVIRONMENT_LABEL})",
            "The stack's environment (the scrape target label).",
        )
    ]
    if service is None:
        found.append(
            _variable(
                "service",
                "Service",
                f"label_values({_VARIABLE_SOURCE}{{{env}}}, service)",
                "The services to show.",
            )
        )
    found.append(
        _variable(
            "version",
            "Version",
            f"label_values({_VARIABLE_SOURCE}{{{env}, {pinned}}}, version)",
            "The releases to show.",
        )
    )
    found.append(
        _variable(
            "track",
            "Track",
            f'label_values({_VARIABLE_SOURCE}{{{env}, {pinned}, version=~"$version"}}, track)',
            "The tracks to show (stable, canary, baseline, blue, green).",
        )
    )
    return found


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right and wrapped at 24 columns."""

    title: str
    panels: Sequence[Panel]


def dashboard(
    uid: str,
    title: str,
    description: str,
    *,
    service: str | None,
    rows: Sequence[Row],
    tags: Sequence[str] = (),
) -> dm.Dashboard:
    """A dashboard with the shared variables, links and time settings. Panel ids are
    their position, so they are stable across renders (and `viewPanel` links keep
    working) as long as the panels keep their order."""
    builder = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, *tags])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(variables(service))
        .link(
            dashboard_builders.DashboardLink("Yardarm dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for row in rows:
        builder = builder.with_row(dashboard_builders.Row(row.title))
        for panel in row.panels:
            builder = builder.with_panel(panel)
    built = builder.build()
    for index, built_panel in enumerate(built.panels or [], start=1):
        built_panel.id_val = index
    return built
