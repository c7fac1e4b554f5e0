"""The one test kit, imported as ``tests.kit`` (the repository root on ``sys.path``: pytest's ``pythonpath``, or a
benchmark run from the root) by the tests, ``bench/`` and the fault harness.

* :mod:`.mariadb` — :class:`~tests.kit.mariadb.MariaDBServer` (scripts/mariadb.sh, private datadir, stoppable)
  and :func:`~tests.kit.mariadb.new_database`.
* :mod:`.broker` — :func:`~tests.kit.broker.tansu_broker`, a Tansu process for the duration of a ``with``.
* :mod:`.feishu` — :class:`~tests.kit.feishu.FakeFeishu` and :class:`~tests.kit.feishu.FaultFeishu`.
* :mod:`.support` — the process launcher (relay, Faust worker, env, kill/terminate), ``wait_for``, the Kafka
  :class:`~tests.kit.support.TopicReader` and upstream-shaped trigger rows.
"""
