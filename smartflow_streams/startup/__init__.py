"""Startup: building the Faust app (:mod:`.faust_app`), the typed worker runtime shared by agents, timers and
views (:mod:`.runtime`) and the handler registry services use to plug in their event types (:mod:`.handlers`).

Named ``startup`` rather than ``app`` on purpose: ``faust -A smartflow_streams worker`` reads the package attribute
``smartflow_streams.app`` (the Faust app); a subpackage of that name would shadow it once imported.

Layering: :mod:`.runtime` and :mod:`.handlers` import only the rooms below them (core, contracts, db, outbox,
notification, scheduler); agents/ and web/ import them. Only :mod:`.faust_app`, the composition root, imports
agents/, tables/ and web/ (inside :func:`~.faust_app.build_app`)."""
