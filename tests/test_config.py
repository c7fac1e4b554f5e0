import os

import pytest
from hypothesis import given, settings, strategies as st

import config


def test_defaults_are_embedded() -> None:
    s = config.load_settings()
    assert s.database_url.startswith("sqlite+aiosqlite:///./var/")
    assert s.time_zone == "Asia/Shanghai" and s.relay.batch_size == 500


def test_env_prefix_nested_and_faust_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTFLOW_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("SMARTFLOW_RELAY__BATCH_SIZE", "200")
    monkeypatch.setenv("SMARTFLOW_FAUST__BROKER_SESSION_TIMEOUT", "6")
    s = config.load_settings()
    assert s.bootstrap_servers() == ["k1:9092", "k2:9093"]
    assert s.relay.batch_size == 200 and s.faust == {"broker_session_timeout": 6}


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("SMARTFLOW_RELAY__BATCH_SIZE", "0", "SMARTFLOW_RELAY__BATCH_SIZE"),
        ("SMARTFLOW_KAFKA_BOOTSTRAP", "nohostport", "SMARTFLOW_KAFKA_BOOTSTRAP"),
        ("SMARTFLOW_DATABASE_URL", "postgresql://x", "SMARTFLOW_DATABASE_URL"),
        ("SMARTFLOW_TIME_ZONE", "Mars/Base", "SMARTFLOW_TIME_ZONE"),
        ("SMARTFLOW_FAUST__NOT_A_SETTING", "1", "SMARTFLOW_FAUST__NOT_A_SETTING"),
        ("SMARTFLOW_NOTIFICATION__MAX_ATTEMPTS", "abc", "SMARTFLOW_NOTIFICATION__MAX_ATTEMPTS"),
    ],
)
def test_invalid_config_names_the_key(monkeypatch: pytest.MonkeyPatch, key: str, value: str, named: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(config.ConfigError) as err:
        config.load_settings()
    assert named in str(err.value)


def test_masked_hides_secrets() -> None:
    s = config.load_settings(
        database_url="mysql+aiomysql://app:topsecret@127.0.0.1:3306/x", admin_token="adm-123456",
        api_tokens={"tok-abcdef": 1},
    )
    text = str(s.masked())
    assert "topsecret" not in text and "adm-123456" not in text and "tok-abcdef" not in text


def test_masked_hides_faust_credentials() -> None:
    s = config.load_settings(faust={"broker_credentials": {"username": "u", "password": "faust-pw-123"},
                                    "broker": "kafka://user:kafka-pw-456@127.0.0.1:9092", "web_port": 6066})
    faust = s.masked()["faust"]
    assert faust["broker_credentials"] == "****" and faust["web_port"] == 6066
    assert "faust-pw-123" not in str(faust) and "kafka-pw-456" not in str(faust)


@pytest.mark.parametrize("overrides", [{"admin_token": "adm-123"}, {"api_tokens": {"short": 3, "long-enough": 4}}])
def test_short_tokens_are_refused_at_start(overrides: dict) -> None:
    with pytest.raises(config.ConfigError, match="at least 8 characters|shorter than 8 characters"):
        config.load_settings(**overrides)
    assert config.load_settings(admin_token="").admin_token is not None  # empty: admin routes disabled


def _env_keys() -> list[str]:
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "config_table", pathlib.Path(__file__).resolve().parent.parent / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return [key for key, _, _ in module.rows(config.Settings, config.ENV_PREFIX)]


ENV_KEYS = _env_keys()


@given(st.sampled_from(ENV_KEYS + ["SMARTFLOW_FAUST__BROKER_SESSION_TIMEOUT", "SMARTFLOW_SERVICES__MEMORY__TOPIC"]),
       st.one_of(st.text(max_size=40), st.sampled_from(["", "-1", "0", "1e309", "[", "{}", "null", "[\"x\"]", "1.5",
                                                        "true", "99999999999999999999"])))
@settings(max_examples=400, deadline=None)
def test_fuzzed_environment_loads_or_names_the_key(key: str, value: str) -> None:
    """Any value in any documented key: the settings load, or ConfigError names that key. Nothing else escapes."""
    if "\x00" in value:
        return  # the OS cannot put NUL into an environment variable
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        config.load_settings()
    except config.ConfigError as exc:
        assert key in str(exc), (key, value, str(exc))
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved
