"""The agent against five broker configurations (issue 13's conformance suite): mosquitto 2.0
spoken to in MQTT 3.1.1 and in 5, RabbitMQ 3.10 (rabbitmq_mqtt), aedes 1.2 and amqtt 0.12.

For each: completeness (every exit of a batch of forked children arrives, checked against what
the agent itself saw), the retained `online` status as a late subscriber sees it, the last will
after a SIGKILL, and replay of the exits that happened while the broker was down. For the
brokers that speak only 3.1.1, the agent left at its default (`mqtt.protocol` 5) must fall back
once to 3.1.1, say so, and deliver. Each broker starts once per module (helpers.brokers) and is
stopped after its tests; each agent runs alone in a pid namespace, so only the test's own exits
reach the broker. `make brokers` installs aedes and amqtt; the others come from apt.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from helpers.brokers import BROKERS, Broker, make_broker, missing
from helpers.common import require
from helpers.mqtt import SLOW, AgentProcess, Collector, Storm, unique_host, wait_until

pytestmark = pytest.mark.brokers

N = 200  # children per batch: enough to keep a window of QoS 1 messages in flight
DEADLINE = 60.0  # a quiet machine needs a few seconds; a broken client never gets there
FALLBACK = 'mqtt.protocol = "3.1.1"'


@pytest.fixture(scope="module", params=BROKERS)
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    name: str = request.param
    reason = missing(name)
    require(reason is None, reason or "")
    with make_broker(name, tmp_path_factory.mktemp(name)) as b:
        yield b


def collector(broker: Broker, topics: list[str], session: str | None = None) -> Collector:
    """A subscriber in the newest protocol the broker speaks."""
    v5 = MQTTProtocolVersion.MQTTv5
    protocol = v5 if broker.speaks_v5 else MQTTProtocolVersion.MQTTv311
    return Collector(broker, topics, session=session, protocol=protocol)


def start_agent(
    agents: Callable[..., AgentProcess], broker: Broker, host: str, default_protocol: bool = False
) -> AgentProcess:
    """The agent alone in a pid namespace, printing every event it sees (the ground truth),
    speaking the broker's ``agent_protocol`` unless ``default_protocol``."""
    env: dict[str, str] = {}
    if not default_protocol:
        env["PROCMON_MQTT__PROTOCOL"] = broker.agent_protocol
    agent = agents(
        broker.url,
        host_id=host,
        env=env,
        config='[sinks]\nstdout = "json"\n',
        own_pid_namespace=True,
    )
    return agent.start()


def seen(agent: AgentProcess) -> list[dict[str, Any]]:
    lines = agent.stdout().split("\n")[:-1]  # the last one may still be partial
    return [json.loads(x) for x in lines if x.startswith("{")]


def exits(*collectors: Collector, host: str) -> list[dict[str, Any]]:
    return [m.json() for c in collectors for m in c.on(f"procmon/{host}/exits")]


def batch_seen(storm: Storm, agent: AgentProcess, n: int) -> bool:
    """The agent saw the n children, their parent (the worker) and the main process."""
    return len([e for e in seen(agent) if e["comm"] == storm.comm]) >= n + 2


def storm_in(agent: AgentProcess, forkstorm: Path, workdir: Path, n: int = N) -> Storm:
    """n forked children in the agent's pid namespace, run to the end."""
    storm = Storm(forkstorm, workdir / "bin").start(n, rate=2000, pid_namespace_of=agent.pid)
    storm.wait()
    return storm


def assert_every_exit_arrived(
    storm: Storm, agent: AgentProcess, received: Callable[[], list[dict[str, Any]]], n: int = N
) -> None:
    """Each of the n children once by pid, and every event the agent saw, by event_id."""
    wait_until(lambda: batch_seen(storm, agent, n), DEADLINE, "the agent to see the batch")
    truth = {e["event_id"] for e in seen(agent)}
    children = storm.children(seen(agent))
    assert len(children) == n and len({e["pid"] for e in children.values()}) == n
    try:
        wait_until(lambda: truth <= {e["event_id"] for e in received()}, DEADLINE, "every exit")
    finally:
        got = {e["event_id"] for e in received()}
        print(f"{len(truth & got)} of {len(truth)} exits arrived ({len(children)} children)")


def test_completeness(
    agent_ready: None, agents: Any, broker: Broker, forkstorm: Path, tmp_path: Path
) -> None:
    """Every exit of the batch arrives. A retained message waits on a topic another client
    subscribes to: amqtt sends it to the agent unasked right after its CONNECT (issue 13)."""
    host = unique_host()
    bait = f"conformance/{host}/retained"
    sub = collector(broker, [f"procmon/{host}/#", bait])
    try:
        sub.client.publish(bait, b"not for the agent", qos=1, retain=True).wait_for_publish(SLOW)
        wait_until(lambda: bool(sub.on(bait)), DEADLINE, "the retained bait")
        agent = start_agent(agents, broker, host)
        storm = storm_in(agent, forkstorm, tmp_path)
        assert_every_exit_arrived(storm, agent, lambda: exits(sub, host=host))
        assert agent.terminate() == 0
    finally:
        sub.client.publish(bait, b"", qos=1, retain=True).wait_for_publish(SLOW)
        sub.close()


def test_retained_online_status_for_a_late_subscriber(
    agent_ready: None, agents: Any, broker: Broker, tmp_path: Path
) -> None:
    host = unique_host()
    status = f"procmon/{host}/status"
    start_agent(agents, broker, host)
    watcher = collector(broker, [status])
    wait_until(lambda: (watcher.last_json(status) or {}).get("state") == "online", DEADLINE)
    watcher.close()
    late = collector(broker, [status])
    wait_until(lambda: bool(late.on(status)), DEADLINE, "the retained status")
    first = late.on(status)[0]
    late.close()
    assert first.retain and first.json()["state"] == "online"
    assert first.json()["host"] == host


def test_last_will_after_sigkill(
    agent_ready: None, agents: Any, broker: Broker, tmp_path: Path
) -> None:
    host = unique_host()
    status = f"procmon/{host}/status"
    watcher = collector(broker, [status])
    agent = start_agent(agents, broker, host)
    try:
        wait_until(lambda: (watcher.last_json(status) or {}).get("state") == "online", DEADLINE)
        agent.kill()
        wait_until(
            lambda: (watcher.last_json(status) or {}).get("state") == "offline",
            DEADLINE,
            "the last will",
        )
        late = collector(broker, [status])
        wait_until(lambda: bool(late.on(status)), DEADLINE, "the retained status")
        first = late.on(status)[0]
        late.close()
        assert first.retain
        assert first.json()["state"] == "offline" and first.json()["reason"] == "connection lost"
    finally:
        watcher.close()


def test_replay_after_broker_restart(
    agent_ready: None, agents: Any, broker: Broker, forkstorm: Path, tmp_path: Path
) -> None:
    """Exits while the broker is down arrive once it is back. Where the broker keeps sessions,
    a persistent subscriber waits in it; elsewhere the agent is frozen (SIGSTOP) while a new
    subscriber comes in, so that no replayed message can beat the subscription."""
    host = unique_host()
    topic = f"procmon/{host}/exits"
    session = f"replay-{uuid.uuid4().hex[:8]}" if broker.keeps_sessions else None
    subs = [collector(broker, [topic], session=session)]
    agent = start_agent(agents, broker, host)
    try:
        online = collector(broker, [f"procmon/{host}/status"])
        wait_until(
            lambda: (online.last_json(f"procmon/{host}/status") or {}).get("state") == "online",
            DEADLINE,
        )
        online.close()
        broker.stop()
        storm = storm_in(agent, forkstorm, tmp_path)
        wait_until(lambda: batch_seen(storm, agent, N), DEADLINE, "the agent to see the batch")
        if broker.keeps_sessions:
            broker.start()
        else:
            agent.signal(signal.SIGSTOP)
            try:
                broker.start()
                subs.append(collector(broker, [topic]))
            finally:
                agent.signal(signal.SIGCONT)
        assert_every_exit_arrived(storm, agent, lambda: exits(*subs, host=host))
        assert agent.terminate() == 0
    finally:
        for sub in subs:
            sub.close()
        if not broker.running:
            broker.start()  # for the module's next tests


def test_default_protocol_falls_back_to_3_1_1_only_where_needed(
    agent_ready: None, agents: Any, broker: Broker, forkstorm: Path, tmp_path: Path
) -> None:
    """With `mqtt.protocol` left at 5: a broker speaking only 3.1.1 gets one retry in 3.1.1,
    and one WARNING naming the setting; an MQTT 5 broker gets no fallback at all."""
    host = unique_host()
    sub = collector(broker, [f"procmon/{host}/exits"])
    try:
        agent = start_agent(agents, broker, host, default_protocol=True)
        storm = storm_in(agent, forkstorm, tmp_path, n=20)
        assert_every_exit_arrived(storm, agent, lambda: exits(sub, host=host), n=20)
        lines = [x for x in agent.stderr().splitlines() if FALLBACK in x]
        assert len(lines) == (0 if broker.speaks_v5 else 1), agent.stderr()
        assert agent.terminate() == 0
    finally:
        sub.close()
