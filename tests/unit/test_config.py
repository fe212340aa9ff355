"""Settings are validated at start, with messages naming the flag."""

from __future__ import annotations

import pytest

from samserve.cli import build_parser
from samserve.config import Limits, ModelSettings, ServerSettings, StoreSettings
from samserve.core.errors import ConfigError, SamServeError


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ConfigError, match="--model"):
        ModelSettings(variant="vit_x")
    with pytest.raises(ConfigError, match="--redis-url"):
        StoreSettings(redis_url="http://x")
    with pytest.raises(ConfigError, match="--cache-ttl"):
        StoreSettings(ttl_seconds=-1)
    with pytest.raises(ConfigError, match="--port"):
        ServerSettings(port=70000)
    with pytest.raises(ConfigError, match="--max-pixels"):
        Limits(max_pixels=0)
    with pytest.raises(ConfigError, match="--checkpoint: no such file"):
        ModelSettings(checkpoint="/nonexistent/sam.pth")


def test_config_error_is_a_samserve_error() -> None:
    assert issubclass(ConfigError, SamServeError)


def test_environment_fallbacks() -> None:
    env = {
        "SAMSERVE_MODEL": "vit_b",
        "SAMSERVE_REDIS_URL": "redis://r:1/0",
        "SAMSERVE_CACHE_TTL": "5",
        "SAMSERVE_HOST": "10.0.0.1",
        "SAMSERVE_PORT": "6000",
        "SAMSERVE_METRICS_PORT": "6001",
        "SAMSERVE_LOG_LEVEL": "DEBUG",
    }
    ns = build_parser(env).parse_args(["decoder"])
    assert ModelSettings.from_args(ns).variant == "vit_b"
    store = StoreSettings.from_args(ns)
    assert (store.redis_url, store.ttl_seconds) == ("redis://r:1/0", 5)
    server = ServerSettings.from_args(ns)
    assert (server.host, server.port, server.metrics_port) == ("10.0.0.1", 6000, 6001)
    assert ns.log_level == "DEBUG"


def test_service_ports_default_per_command() -> None:
    parser = build_parser({})
    assert parser.parse_args(["embedding"]).port == 50051
    assert parser.parse_args(["decoder"]).port == 50052
    assert parser.parse_args(["decoder"]).metrics_port == 9102


def test_flags_win_over_environment() -> None:
    ns = build_parser({"SAMSERVE_MODEL": "vit_b"}).parse_args(["embedding", "--model", "tiny"])
    assert ModelSettings.from_args(ns).variant == "tiny"
    assert ns.port == 50051


def test_one_grace_default_everywhere() -> None:
    parser = build_parser({})
    graces = {parser.parse_args([cmd]).grace for cmd in ("up", "embedding", "decoder")}
    assert graces == {10.0}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SAMSERVE_PORT": "fifty"}, ("SAMSERVE_PORT", "--port")),
        ({"SAMSERVE_CACHE_TTL": "1.5"}, ("SAMSERVE_CACHE_TTL", "--cache-ttl")),
        ({"SAMSERVE_GRACE": "soon"}, ("SAMSERVE_GRACE", "--grace")),
    ],
)
def test_a_bad_environment_value_names_variable_and_flag(
    env: dict[str, str], names: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as e:
        build_parser(env)
    assert all(n in str(e.value) for n in names)
    assert "\n" not in str(e.value)
