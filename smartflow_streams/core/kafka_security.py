"""The one home of Kafka connection security: ``settings.kafka`` turned into aiokafka and Faust arguments.

Invariants:
- The relay producer, the relay's admin client and the Faust worker get their security from these functions
  only, so one ``SMARTFLOW_KAFKA__*`` block configures every client the same way.
- TLS contexts verify the broker certificate (``CERT_REQUIRED``) against ``ssl_cafile`` or the system CAs; host
  names are checked unless ``ssl_check_hostname`` is false. There is no "trust everything" switch.
- Passwords (SASL, client key) are registered as pinned log secrets before a client gets them, so a client
  error that echoes one is masked like the admin token.
"""

from __future__ import annotations

import ssl
from typing import Any

from config import ENV_PREFIX, ConfigError, KafkaSecuritySettings, Settings
from smartflow_streams.core.masking import SECRETS


def ssl_context(kafka: KafkaSecuritySettings) -> ssl.SSLContext | None:
    """The client TLS context for ``SSL``/``SASL_SSL``, ``None`` for plaintext protocols.

    Raises :class:`config.ConfigError` naming the key when the CA file or the client certificate/key cannot be
    read (missing, not PEM, wrong key password), so a process fails at start-up instead of retrying forever.
    """
    if not kafka.uses_ssl:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kafka.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{ENV_PREFIX}KAFKA__SSL_CAFILE: cannot load {kafka.ssl_cafile!r}: {exc}") from None
    context.check_hostname = kafka.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if kafka.ssl_certfile:
        password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile, password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{ENV_PREFIX}KAFKA__SSL_CERTFILE/{ENV_PREFIX}KAFKA__SSL_KEYFILE: cannot load "
                              f"{kafka.ssl_certfile!r}: {exc}") from None
    return context


def _register_secrets(kafka: KafkaSecuritySettings) -> None:
    for secret in (kafka.sasl_password, kafka.ssl_key_password):
        if secret is not None:
            SECRETS.add(secret.get_secret_value(), pin=True)


def aiokafka_security_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient`` (aiokafka 0.14)."""
    kafka = settings.kafka
    _register_secrets(kafka)
    kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if kafka.uses_sasl:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return kwargs


def faust_broker_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for ``faust.App``: ``None`` (PLAINTEXT), ``SSLCredentials`` or ``SASLCredentials``.

    Faust's aiokafka driver turns these back into the arguments :func:`aiokafka_security_kwargs` gives
    (``SASLCredentials`` with a context means ``SASL_SSL``, without one ``SASL_PLAINTEXT``).
    """
    import faust

    kafka = settings.kafka
    _register_secrets(kafka)
    context = ssl_context(kafka)
    if kafka.uses_sasl:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=context, mechanism=kafka.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None
