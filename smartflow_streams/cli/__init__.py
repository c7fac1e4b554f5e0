"""Command line: the ``smartflow`` commands (:mod:`.commands`), the one-command local stack they start
(:mod:`.launcher`) and the embedded Kafka-protocol broker helpers (:mod:`.embedded`)."""
