"""Kafka TLS/SASL: one ``SMARTFLOW_KAFKA__*`` block reaches the relay's aiokafka clients and Faust's, secrets
masked, and TLS end to end through a real TLS endpoint (certificates made here by ``trustme``) in front of Tansu."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import sys
import uuid

import pytest
import trustme
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

import config
from conftest import drop_database, make_database
from outbox_relay.producer import build_producer
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process
from smartflow_streams.core.kafka_security import aiokafka_security_kwargs, faust_broker_credentials
from smartflow_streams.core.masking import MaskingFilter
from smartflow_streams.outbox.repository import OutboxRepository
from tests.kit.support import ROOT, TlsProxy, base_env, spawn_relay, terminate, wait_for

PASSWORD = "sasl-pass-Zq81xx"


def _settings(**kafka: object) -> config.Settings:
    return config.load_settings(database_url="sqlite+aiosqlite:///:memory:", kafka=kafka)


def _client_of(obj: object) -> object:
    """The ``AIOKafkaClient`` inside a producer (``client``) or consumer (``_client``)."""
    return getattr(obj, "client", None) or obj._client  # type: ignore[attr-defined]


def _faust_clients(settings: config.Settings) -> tuple[object, object]:
    """The real aiokafka consumer and producer Faust's driver builds for a worker with these settings."""
    from smartflow_streams.startup.faust_app import build_app

    app = build_app(settings)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    producer = app.producer._new_producer()
    return consumer, producer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("protocol,mechanism", [
    ("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
    ("SASL_SSL", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512"),
])
async def test_each_sasl_mode_reaches_relay_producer_admin_and_faust(protocol: str, mechanism: str, ca, tmp_path):
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    settings = _settings(security_protocol=protocol, sasl_mechanism=mechanism, sasl_username="svc-relay",
                         sasl_password=PASSWORD, ssl_cafile=str(cafile))
    config.set_settings(settings)
    producer = build_producer(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(), **aiokafka_security_kwargs(settings))
    faust_consumer, faust_producer = _faust_clients(settings)
    for client in (_client_of(producer), admin._client, _client_of(faust_consumer), _client_of(faust_producer)):
        assert client._security_protocol == protocol
        assert client._sasl_mechanism == mechanism
        assert client._sasl_plain_username == "svc-relay"
        assert client._sasl_plain_password == PASSWORD
        if protocol == "SASL_SSL":
            assert isinstance(client._ssl_context, ssl.SSLContext)
            assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED and client._ssl_context.check_hostname
            assert client._ssl_context.get_ca_certs(), "CA file not loaded"
        else:
            assert client._ssl_context is None
    assert repr(faust_broker_credentials(settings)).count(PASSWORD) == 0  # Faust's repr shows the user only


async def test_ssl_with_client_certificate_and_hostname_switch(ca, tmp_path):
    cafile, certfile = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ca.issue_cert("smartflow-relay").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    settings = _settings(security_protocol="SSL", ssl_cafile=str(cafile), ssl_certfile=str(certfile),
                         ssl_check_hostname=False)
    config.set_settings(settings)
    faust_consumer, faust_producer = _faust_clients(settings)
    for client in (_client_of(build_producer(settings)), _client_of(faust_consumer), _client_of(faust_producer)):
        assert client._security_protocol == "SSL" and client._sasl_mechanism in (None, "PLAIN")
        context = client._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
        assert [c["subject"] for c in context.get_ca_certs()], "CA file not loaded"


async def test_plaintext_is_the_default_and_sends_no_credentials():
    settings = _settings()
    assert aiokafka_security_kwargs(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(settings) is None
    client = _client_of(build_producer(settings))
    assert client._security_protocol == "PLAINTEXT" and client._ssl_context is None


def test_bad_values_name_the_key():
    with pytest.raises(config.ConfigError, match="SMARTFLOW_KAFKA__SECURITY_PROTOCOL"):
        _settings(security_protocol="TLS")
    with pytest.raises(config.ConfigError, match="SMARTFLOW_KAFKA__SASL_MECHANISM"):
        _settings(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI")
    with pytest.raises(config.ConfigError, match="SMARTFLOW_RELAY__ENABLE_IDEMPOTENCE: .*acks=all"):
        config.load_settings(relay={"acks": "1", "enable_idempotence": True})


def test_relay_with_an_unreadable_ca_file_exits_2_naming_the_key(tmp_path):
    env = base_env(f"sqlite+aiosqlite:///{tmp_path}/x.db", "127.0.0.1:9093",
                   SMARTFLOW_KAFKA__SECURITY_PROTOCOL="SSL", SMARTFLOW_KAFKA__SSL_CAFILE=str(tmp_path / "missing.pem"))
    out = subprocess.run([sys.executable, "-m", "outbox_relay"], env=env, cwd=str(ROOT), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "SMARTFLOW_KAFKA__SSL_CAFILE: cannot load" in out.stderr, out.stderr


def test_environment_block_and_masking_in_config_output(tmp_path):
    env = base_env(f"sqlite+aiosqlite:///{tmp_path}/x.db", "127.0.0.1:9093",
                   SMARTFLOW_KAFKA__SECURITY_PROTOCOL="SASL_SSL", SMARTFLOW_KAFKA__SASL_MECHANISM="SCRAM-SHA-256",
                   SMARTFLOW_KAFKA__SASL_USERNAME="svc", SMARTFLOW_KAFKA__SASL_PASSWORD=PASSWORD,
                   SMARTFLOW_KAFKA__SSL_KEY_PASSWORD="key-pass-77xy", SMARTFLOW_RELAY__ENABLE_IDEMPOTENCE="true",
                   SMARTFLOW_RELAY__ACKS="all")
    out = subprocess.run([sys.executable, "-m", "smartflow_streams.cli", "config"], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout and "key-pass-77xy" not in out.stdout
    shown = json.loads(out.stdout)
    assert shown["kafka"]["security_protocol"] == "SASL_SSL" and shown["kafka"]["sasl_password"] == "****"
    assert shown["kafka"]["sasl_username"] == "svc" and shown["relay"]["enable_idempotence"] is True


def test_password_masked_in_log_records():
    settings = _settings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=PASSWORD)
    aiokafka_security_kwargs(settings)  # registers the secret, as the relay and worker do before connecting
    record = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "auth failed for %s", (PASSWORD,), None)
    MaskingFilter().filter(record)
    assert PASSWORD not in record.getMessage() and "****" in record.getMessage()


async def test_relay_idempotence_and_acks_reach_the_producer():
    settings = config.load_settings(database_url="sqlite+aiosqlite:///:memory:",
                                    relay={"enable_idempotence": True, "acks": "all"})
    producer = build_producer(settings)
    assert producer._txn_manager is not None and producer._sender._acks == -1  # idempotent, acks=all
    plain = build_producer(config.load_settings(database_url="sqlite+aiosqlite:///:memory:", relay={"acks": "1"}))
    assert plain._txn_manager is None and plain._sender._acks == 1


def _server_context(ca: trustme.CA, *names: str, client_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE  # mutual TLS by default
    return context


@pytest.mark.slow
async def test_tls_end_to_end_relay_publishes_and_consumer_reads_through_tls(ca, tmp_path):
    cafile, certfile = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ca.issue_cert("smartflow-relay").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    broker_port = free_port()
    async with TlsProxy(broker_port, _server_context(ca)) as proxy:
        tansu = start_tansu(broker_port, advertised_port=proxy.port)
        db = await make_database("sqlite", tmp_path, None)
        try:
            await upgrade_schema(db.engine)
            topic = f"t.{uuid.uuid4().hex[:8]}.notification"
            bootstrap = f"127.0.0.1:{proxy.port}"
            tls = {"security_protocol": "SSL", "ssl_cafile": str(cafile), "ssl_certfile": str(certfile)}
            settings = config.load_settings(database_url=db.url, kafka_bootstrap=bootstrap, kafka=tls,
                                            services={"notification": {"topic": topic}})
            config.set_settings(settings)
            repo = OutboxRepository.for_service("notification")
            async with db.sessions() as s, s.begin():
                for i in range(50):
                    await repo.enqueue(s, "notification.feishu.requested", {"seq": i}, message_key=str(i % 5),
                                       event_version="1")
            env = base_env(db.url, bootstrap, SMARTFLOW_RELAY__SERVICES='["notification"]',
                           SMARTFLOW_SERVICES__NOTIFICATION__TOPIC=topic,
                           SMARTFLOW_KAFKA__SECURITY_PROTOCOL="SSL", SMARTFLOW_KAFKA__SSL_CAFILE=str(cafile),
                           SMARTFLOW_KAFKA__SSL_CERTFILE=str(certfile))
            log_path = tmp_path / "relay.log"
            relay = spawn_relay(env, log_path)
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                        auto_offset_reset="earliest", enable_auto_commit=False,
                                        metadata_max_age_ms=1000, **aiokafka_security_kwargs(settings))
            seen: set[int] = set()
            try:
                await consumer.start()

                async def all_read() -> bool:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        seen.update(json.loads(r.value)["outbox_id"] for r in records)
                    return len(seen) >= 50
                await wait_for(all_read, 60, what="50 messages read over TLS")
            finally:
                await consumer.stop()
                code = terminate(relay)
            assert code == 0, log_path.read_text()[-3000:]
            assert len(seen) == 50
            assert proxy.handshakes >= 2  # the relay's and the consumer's connections were TLS sessions
        finally:
            await drop_database(db, None)
            stop_process(tansu)


@pytest.mark.slow
async def test_tls_refuses_a_broker_certificate_from_another_ca(ca, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    broker_port = free_port()
    async with TlsProxy(broker_port, _server_context(ca)) as proxy:
        tansu = start_tansu(broker_port, advertised_port=proxy.port)
        try:
            settings = _settings(security_protocol="SSL", ssl_cafile=str(other))
            consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{proxy.port}", request_timeout_ms=3000,
                                        **aiokafka_security_kwargs(settings))
            with pytest.raises(KafkaConnectionError):
                await asyncio.wait_for(consumer.start(), 20)
            await consumer.stop()
        finally:
            stop_process(tansu)


@pytest.mark.slow
@pytest.mark.parametrize("check_hostname", [True, False])
async def test_tls_hostname_check_refuses_a_certificate_for_another_host(check_hostname: bool, ca, tmp_path):
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    broker_port = free_port()
    async with TlsProxy(broker_port, _server_context(ca, "broker.invalid", client_cert=False)) as proxy:
        tansu = start_tansu(broker_port, advertised_port=proxy.port)
        try:
            settings = _settings(security_protocol="SSL", ssl_cafile=str(cafile), ssl_check_hostname=check_hostname)
            admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{proxy.port}", request_timeout_ms=3000,
                                        **aiokafka_security_kwargs(settings))
            try:
                if check_hostname:  # the certificate names broker.invalid, not 127.0.0.1
                    with pytest.raises(KafkaConnectionError):
                        await asyncio.wait_for(admin.start(), 20)
                else:  # same CA, name not checked: the connection works
                    await asyncio.wait_for(admin.start(), 20)
                    assert isinstance(await admin.list_topics(), list)
            finally:
                await admin.close()
        finally:
            stop_process(tansu)
