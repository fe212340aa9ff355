"""Settings are validated at start, with messages naming the flag."""

from __future__ import annotations

import pytest

from samserve.cli import build_parser
from samserve.config import Limits, ModelSettings, ServerSettings, StoreSettings


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ValueError, match="--model"):
        ModelSettings(variant="vit_x")
    with pytest.raises(ValueError, match="--redis-url"):
        StoreSettings(redis_url="http://x")
    with pytest.raises(ValueError, match="--cache-ttl"):
        StoreSettings(ttl_seconds=-1)
    with pytest.raises(ValueError, match="port"):
        ServerSettings(port=70000)
    with pytest.raises(ValueError, match="max_pixels"):
        Limits(max_pixels=0)


def test_environment_fallbacks() -> None:
    env = {
        "SAMSERVE_MODEL": "vit_b",
        "SAMSERVE_REDIS_URL": "redis://r:1/0",
        "SAMSERVE_CACHE_TTL": "5",
    }
    ns = build_parser(env).parse_args(["decoder"])
    assert ModelSettings.from_args(ns).variant == "vit_b"
    store = StoreSettings.from_args(ns)
    assert (store.redis_url, store.ttl_seconds) == ("redis://r:1/0", 5)
    assert ns.port == 50052


def test_flags_win_over_environment() -> None:
    ns = build_parser({"SAMSERVE_MODEL": "vit_b"}).parse_args(["embedding", "--model", "tiny"])
    assert ns.model == "tiny"
    assert ns.port == 50051
