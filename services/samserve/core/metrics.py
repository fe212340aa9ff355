"""Every Prometheus metric, declared once, on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    """The metrics of one process; tests pass a private registry.

    Names follow Prometheus conventions: ``samserve_`` prefix, base units, ``_total`` counters.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "samserve_requests_total",
            "RPCs handled, by service, method and gRPC status code.",
            ["service", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "samserve_request_duration_seconds",
            "RPC handling time, by service and method.",
            ["service", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "samserve_inflight_requests",
            "RPCs being handled now, by service and method.",
            ["service", "method"],
            registry=r,
        )
        self.cache = Counter(
            "samserve_cache_lookups_total",
            "Embedding lookups by tier (lru, redis) and result (hit, miss).",
            ["tier", "result"],
            registry=r,
        )
        self.encoder_seconds = Histogram(
            "samserve_encoder_duration_seconds",
            "Image encoder time per image (decode and resize excluded).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decoder_seconds = Histogram(
            "samserve_decoder_duration_seconds",
            "Prompt encoder + mask decoder + postprocessing time per Segment call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.coalesced = Counter(
            "samserve_embed_coalesced_total",
            "Embed calls answered by another call's encoder run for the same image.",
            registry=r,
        )
        self.admission_slots = Gauge(
            "samserve_admission_slots",
            "Jobs an admission lane runs at once.",
            ["lane"],
            registry=r,
        )
        self.admission_running = Gauge(
            "samserve_admission_running",
            "Jobs running in an admission lane.",
            ["lane"],
            registry=r,
        )
        self.admission_queued = Gauge(
            "samserve_admission_queued",
            "Cost waiting in an admission lane (prompts for the decoder, images for the encoder).",
            ["lane"],
            registry=r,
        )
        self.admission_wait = Histogram(
            "samserve_admission_wait_seconds",
            "Time admitted jobs waited for a slot.",
            ["lane"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.admission_unit_seconds = Gauge(
            "samserve_admission_unit_seconds",
            "Moving average of the time one unit of a lane's work takes (its wait estimate).",
            ["lane"],
            registry=r,
        )
        self.admission_refused = Counter(
            "samserve_admission_refused_total",
            "Jobs refused because a lane's queue was full (RESOURCE_EXHAUSTED with pushback).",
            ["lane"],
            registry=r,
        )
        self.auth = Counter(
            "samserve_auth_total",
            "Calls checked for a bearer token, by token name ('-' when none matched) and result "
            "(ok, missing, unknown).",
            ["client", "result"],
            registry=r,
        )
        self.lease = Counter(
            "samserve_encode_lease_total",
            "Embeds that needed the encoder, by how the cross-replica lease went: 'held' (this "
            "replica encoded) or 'waited' (another replica's entry answered).",
            ["result"],
            registry=r,
        )
        self.redis_up = Gauge(
            "samserve_redis_up", "1 when the embedding store answers pings.", registry=r
        )
        self.degraded = Gauge(
            "samserve_degraded",
            "1 while the embedding store is unreachable: the pod stays SERVING, decoders answer "
            "what their LRU holds, calls that need Redis get UNAVAILABLE.",
            registry=r,
        )
