"""What the tests share: requirements (common), a mosquitto broker (mosquitto), the agent and
subscribers on the bus (mqtt), network namespaces (netns), a probe in the test process
(probe_collector), ground-truth exits (exit_cases) and the redaction corpus (redact_corpus).

Fixtures are defined once, in conftest.py; test modules import helpers as
``from helpers.x import y`` (pytest, mypy and ruff all see tests/ as the import root).
"""
