"""The outbox relay sidecar: moves committed outbox rows onto their services' Kafka topics.

Run ``python -m outbox_relay`` (or ``smartflow-relay``). See :mod:`outbox_relay.relay` for the invariants.
"""
