"""Notification delivery: Feishu webhook providers (:mod:`.feishu.provider`) and per-webhook rate limiting (:mod:`.limiter`).

This package only talks HTTP; the notification record state machine (pending/sending/sent/failed/dead/skipped) lives
elsewhere and calls :meth:`feishu.provider.WebhookProvider.send` once per attempt.
"""
