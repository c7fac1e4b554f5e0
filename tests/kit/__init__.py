"""The one test kit: process launcher, fake Feishu server, topic reader (used by tests, bench/ and the fault
harness; import it as ``tests.kit`` with the repository root on ``sys.path``)."""
