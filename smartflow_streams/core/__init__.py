"""Core: what every room uses and nothing here imports back — the one clock (:mod:`.clock`), the retriable error
taxonomy (:mod:`.errors`), secret masking (:mod:`.masking`), logging setup (:mod:`.logs`) and Prometheus metrics
(:mod:`.metrics`). Modules here import only ``config`` and each other."""
