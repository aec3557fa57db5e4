"""Configuration: explicit argument > environment > default, read in constructors only."""

from __future__ import annotations

import pytest

from keybrake import ConfigurationError, Keybrake
from keybrake._config import DEFAULT_API_URL, DEFAULT_PROXY_URL, ClientConfig


def test_defaults() -> None:
    config = ClientConfig.resolve(environ={})
    assert (config.token, config.api_url, config.proxy_url) == (
        None,
        DEFAULT_API_URL,
        DEFAULT_PROXY_URL,
    )


def test_keybrake_url_sets_both_and_the_specific_ones_win() -> None:
    env = {"KEYBRAKE_URL": "http://self.hosted:8787/"}
    both = ClientConfig.resolve(environ=env)
    assert (both.api_url, both.proxy_url) == ("http://self.hosted:8787",) * 2
    env |= {"KEYBRAKE_API_URL": "http://api:1", "KEYBRAKE_PROXY_URL": "http://proxy:2"}
    specific = ClientConfig.resolve(environ=env)
    assert (specific.api_url, specific.proxy_url) == ("http://api:1", "http://proxy:2")


def test_arguments_win_over_the_environment() -> None:
    env = {"KEYBRAKE_TOKEN": "kb_admin_env", "KEYBRAKE_API_URL": "http://api:1"}
    config = ClientConfig.resolve(token="kb_admin_arg", api_url="http://arg:3", environ=env)
    assert (config.token, config.api_url) == ("kb_admin_arg", "http://arg:3")


def test_the_environment_is_read_when_constructed_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYBRAKE_URL", "http://first:1")
    first = Keybrake("kb_admin_x")
    monkeypatch.setenv("KEYBRAKE_URL", "http://second:2")
    second = Keybrake("kb_admin_x")
    assert (first.config.api_url, second.config.api_url) == ("http://first:1", "http://second:2")


def test_the_token_is_never_in_repr() -> None:
    config = ClientConfig.resolve(token="kb_admin_secret", environ={})
    assert "kb_admin_secret" not in repr(config)
    assert "kb_admin_secret" not in repr(Keybrake("kb_admin_secret"))


@pytest.mark.parametrize("url", ["ftp://x", "api.keybrake.com", ""])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    if not url:
        assert ClientConfig.resolve(api_url=url, environ={}).api_url == DEFAULT_API_URL
        return
    with pytest.raises(ConfigurationError, match="http"):
        ClientConfig.resolve(api_url=url, environ={})


def test_server_config_reads_env_with_overrides_winning_and_hides_secrets() -> None:
    from keybrake.server import ServerConfig

    env = {
        "KEYBRAKE_DATABASE_URL": "sqlite:///env.db",
        "KEYBRAKE_ADMIN_TOKEN": "kb_admin_hidden",
        "KEYBRAKE_STRIPE_SECRET_KEY": "sk_live_hidden",
        "KEYBRAKE_TWILIO_AUTH_TOKEN": "twilio_hidden",
        "KEYBRAKE_METRICS_TOKEN": "metrics_hidden",
    }
    config = ServerConfig.from_env(env, database_url="sqlite:///arg.db", pricing_file=None)
    assert config.database_url == "sqlite:///arg.db"
    assert config.vendor_settings["stripe"] == {"secret_key": "sk_live_hidden"}
    assert config.vendor_settings["twilio"] == {"auth_token": "twilio_hidden"}
    assert config.metrics_token == "metrics_hidden"
    for secret in ("kb_admin_hidden", "sk_live_hidden", "twilio_hidden", "metrics_hidden"):
        assert secret not in repr(config)
    assert ServerConfig.from_env(env, metrics_token="metrics_arg").metrics_token == "metrics_arg"
    assert ServerConfig.from_env({}).metrics_token is None


@pytest.mark.parametrize("token", ["", "two words", "caf\u00e9", "tab\there"])
def test_a_metrics_token_that_no_bearer_header_can_carry_is_refused(token: str) -> None:
    from keybrake.server import ServerConfig

    with pytest.raises(ValueError, match="metrics_token"):
        ServerConfig(metrics_token=token)


def test_the_idle_timeout_comes_from_the_argument_the_environment_or_75() -> None:
    from keybrake.server import ServerConfig

    assert ServerConfig.from_env({}).idle_timeout == 75
    env = {"KEYBRAKE_IDLE_TIMEOUT": "620"}
    assert ServerConfig.from_env(env).idle_timeout == 620
    assert ServerConfig.from_env(env, idle_timeout=90).idle_timeout == 90
    for bad in (0, -1, 3601):
        with pytest.raises(ValueError, match="idle_timeout"):
            ServerConfig(idle_timeout=bad)
