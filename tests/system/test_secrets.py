"""No secret leaves the agent: the broker password is grepped for in everything the agent and
the CLI emit (argv, environment of the agent and of any child, stdout and stderr at info and
debug level, every retained status and stats message, the events, the spool file), and in the
output of `procmon check --broker` and `procmon subscribe`, with the right and a wrong password.

Related, elsewhere: a world-readable password file is refused (test_mqtt_agent.py), and the
wrong-password line of the agent names the fix (test_mqtt_agent.py).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers.common import REPO
from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, AgentProcess, Collector, unique_host, wait_until

PROCMON = str(REPO / ".venv/bin/procmon")


def password_file(directory: Path, password: str) -> Path:
    path = directory / f"password-{uuid.uuid4().hex[:6]}"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def process_texts(pid: int) -> dict[str, bytes]:
    """argv and environment of pid and of every descendant."""
    texts: dict[str, bytes] = {}
    for p in descendants(pid):
        for what in ("cmdline", "environ"):
            try:
                texts[f"/proc/{p}/{what}"] = Path(f"/proc/{p}/{what}").read_bytes()
            except OSError:
                continue
    return texts


def leaks(password: str, texts: dict[str, bytes]) -> list[str]:
    needle = password.encode()
    return [where for where, text in texts.items() if needle in text]


@pytest.fixture
def secret_broker(tmp_path: Path, mosquitto_ready: None) -> Any:
    password = f"pw-{uuid.uuid4().hex}"
    broker = Mosquitto(tmp_path / "broker", passwords={"agent": password}, persistence=False)
    broker.start()
    yield broker, password
    broker.kill()


@pytest.mark.parametrize("log_level", ["info", "debug"])
def test_password_appears_nowhere_the_agent_emits(
    agent_ready: None, secret_broker: Any, agents: Any, tmp_path: Path, log_level: str
) -> None:
    broker, password = secret_broker
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/#"], login=("agent", password))
    agent: AgentProcess = agents(
        broker.url,
        host_id=host,
        env={
            "PROCMON_MQTT__USERNAME": "agent",
            "PROCMON_MQTT__PASSWORD_FILE": str(password_file(tmp_path, password)),
            "PROCMON_LOG_LEVEL": log_level,
        },
        config='[sinks]\nstdout = "json"\n',  # stdout carries every event too
    ).start()
    status = f"procmon/{host}/status"
    wait_until(lambda: (collector.last_json(status) or {}).get("state") == "online")
    for _ in range(3):
        subprocess.run(["true"], check=True)
    wait_until(lambda: len(collector.on(f"procmon/{host}/stats")) >= 2, SLOW, "two stats")
    texts = process_texts(agent.pid)
    assert texts, "nothing read from /proc"
    assert agent.terminate() == 0
    wait_until(lambda: collector.last_json(status)["state"] == "offline", what="offline")
    collector.close()
    late = Collector(broker, [status], login=("agent", password))  # the retained one
    wait_until(lambda: late.last_json(status) is not None, what="the retained status")
    late.close()

    texts["stdout"] = agent.stdout().encode()
    texts["stderr"] = agent.stderr().encode()
    for n, message in enumerate(collector.messages + late.messages):
        texts[f"message {n} on {message.topic}"] = message.payload
        texts[f"message {n} properties"] = repr(message.properties).encode()
    for path in agent.spool.parent.glob("*"):
        texts[str(path)] = path.read_bytes()
    assert any("/stats" in k for k in texts) and any("/status" in k for k in texts)
    if log_level == "debug":
        assert "DEBUG" in agent.stderr() or "INFO" in agent.stderr()
    assert leaks(password, texts) == []


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROCMON, *args], capture_output=True, text=True, timeout=SLOW, cwd=REPO)


@pytest.mark.parametrize("log_level", ["warning", "debug"])
def test_check_and_subscribe_output_holds_no_password(
    agent_ready: None, secret_broker: Any, tmp_path: Path, log_level: str
) -> None:
    broker, password = secret_broker
    wrong = f"wrong-{uuid.uuid4().hex}"
    good_file, wrong_file = password_file(tmp_path, password), password_file(tmp_path, wrong)
    texts: dict[str, bytes] = {}

    ok = _run("--log-level", log_level, "check", "--broker", broker.url,
              "--username", "agent", "--password-file", str(good_file))  # fmt: skip
    texts["check ok"] = (ok.stdout + ok.stderr).encode()
    assert ok.returncode == 0, ok.stdout + ok.stderr

    bad = _run("--log-level", log_level, "check", "--broker", broker.url,
               "--username", "agent", "--password-file", str(wrong_file))  # fmt: skip
    texts["check wrong"] = (bad.stdout + bad.stderr).encode()
    assert bad.returncode != 0
    refusal = [x for x in bad.stdout.splitlines() if "refused" in x or "not authori" in x]
    assert refusal, bad.stdout + bad.stderr  # the error line is there, and names no secret

    sub = _run("--log-level", log_level, "subscribe", "--broker", broker.url, "--timeout", "1",
               "--username", "agent", "--password-file", str(good_file))  # fmt: skip
    texts["subscribe"] = (sub.stdout + sub.stderr).encode()
    sub_bad = _run("--log-level", log_level, "subscribe", "--broker", broker.url, "--timeout",
                   "3", "--username", "agent", "--password-file", str(wrong_file))  # fmt: skip
    texts["subscribe wrong"] = (sub_bad.stdout + sub_bad.stderr).encode()
    assert "refused" in sub_bad.stderr, sub_bad.stderr

    assert leaks(password, texts) == [] and leaks(wrong, texts) == []


def test_wrong_password_agent_run_names_no_password(
    agent_ready: None, secret_broker: Any, agents: Any, tmp_path: Path
) -> None:
    broker, password = secret_broker
    wrong = f"wrong-{uuid.uuid4().hex}"
    agent: AgentProcess = agents(
        broker.url,
        env={
            "PROCMON_MQTT__USERNAME": "agent",
            "PROCMON_MQTT__PASSWORD_FILE": str(password_file(tmp_path, wrong)),
            "PROCMON_LOG_LEVEL": "debug",
        },
    ).start()
    wait_until(lambda: "refused" in agent.stderr(), SLOW, "the refusal")
    texts = process_texts(agent.pid)
    assert agent.terminate() == 0
    texts["stderr"] = agent.stderr().encode()
    texts["stdout"] = agent.stdout().encode()
    (line,) = [x for x in agent.stderr().splitlines() if "refused" in x]
    assert "password file" in line
    assert leaks(wrong, texts) == [] and leaks(password, texts) == []
