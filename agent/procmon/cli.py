"""The `procmon` command: tail, agent, subscribe, check, schema."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procmon import __version__
from procmon.config import ConfigError, EnrichConfig, ProbeConfig, load_config
from procmon.event_filter import EventFilter, FilterError
from procmon.exit_status import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from procmon.logs import LOG_LEVELS, setup_logging
from procmon.probe.cgroup_target import CgroupTargetError
from procmon.probe.errors import ProbeError
from procmon.signals import Signals

log = logging.getLogger("procmon")

# Subcommands that write no log lines, where --log-level means nothing and is refused.
COMMANDS_WITHOUT_LOGS = frozenset({"schema"})


# --- tail ----------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    from procmon.assemble import attach_context, attach_probe, event_builder
    from procmon.pipeline import Pipeline
    from procmon.probe.cgroup_target import cgroup_target
    from procmon.sinks import Sink
    from procmon.sinks.kmsg import KmsgSink
    from procmon.sinks.stdout import StdoutSink, use_color

    fmt = _text_format(args, "tail", default="human")
    cfg = ProbeConfig(
        backend=args.backend,
        per_thread=args.per_thread,
        failed_only=args.failed,
        pidns_scope=args.pidns_scope,
        exclude_self=True,
        ring_size_kb=args.ring_size_kb,
    )
    enrich = EnrichConfig(enabled=not args.no_context, capture_args=not args.no_args)
    cgroup = cgroup_target(args.cgroup) if args.cgroup else None
    if args.pid and not Path(f"/proc/{args.pid}").exists():  # its exit would never come
        raise FilterError(f"--pid {args.pid}: no such process")
    accept = _tail_filter(args)
    with Signals() as stop:
        probe = attach_probe(cfg, enrich, target_tgid=args.pid or 0, cgroup=cgroup)
        log.info("attached %s backend in %.3f s", probe.backend, probe.attach_seconds)
        color = use_color(args.color, sys.stdout)
        sinks: list[Sink] = [StdoutSink(fmt, sys.stdout.buffer, color)]
        if args.kmsg:
            sinks.append(KmsgSink())
        builder = event_builder(args.host_id or _hostname(), probe, attach_context(enrich, probe))
        pipeline = Pipeline(
            probe,
            builder,
            sinks,
            cfg.poll_interval_ms,
            max_events=args.count,
            accept=accept if accept.active else None,
        )
        with contextlib.suppress(BrokenPipeError):  # the reader went away (`| head`): stop quietly
            pipeline.run(stop)
    filtered = f"; filtered out: {pipeline.filtered_out}" if accept.active else ""
    print(
        f"Total process exits monitored: {pipeline.counters.events_seen} (dropped in kernel: "
        f"{pipeline.kernel_drops()}; context lost: {pipeline.context_drops()}{filtered})",
        file=sys.stderr,
    )
    return EXIT_OK


def _tail_filter(args: argparse.Namespace) -> EventFilter:
    """The userspace filters; --unit and --container need the context --no-context turns off."""
    from procmon.event_filter import comm_pattern, container_prefix, uid_of

    if args.no_context and (args.unit or args.container):
        flag = "--unit" if args.unit else "--container"
        raise FilterError(f"{flag} needs the cgroup context that --no-context turns off")
    return EventFilter(
        comm=comm_pattern(args.comm) if args.comm is not None else None,
        uid=uid_of(args.uid) if args.uid is not None else None,
        unit=args.unit,
        container=container_prefix(args.container) if args.container is not None else None,
    )


def _hostname() -> str:
    import socket

    return socket.gethostname()


# --- agent / subscribe ---------------------------------------------------------------------


def _agent_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["mqtt"] = {"broker": args.broker, "brokers": ()}  # the flag names the one
    if args.host_id:
        overrides["host_id"] = args.host_id
    if args.log_level:  # the global flag wins over the config's log_level
        overrides["log_level"] = args.log_level
    return overrides


def cmd_agent(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _agent_overrides(args))
    if args.print_config:
        from procmon.config_doc import effective_toml

        sys.stdout.write(effective_toml(cfg))
        return EXIT_OK
    if args.check_config:
        brokers = ",".join(cfg.mqtt.broker_urls)  # mqtt.brokers, or the one mqtt.broker
        print(f"config ok: host_id={cfg.host_id} broker={brokers} probe={cfg.probe.backend}")
        return EXIT_OK
    from procmon.agent import run_agent

    return run_agent(cfg, config_path=args.config, overrides=_agent_overrides(args))


def cmd_subscribe(args: argparse.Namespace) -> int:
    from procmon.subscribe import run_subscribe

    fmt = _text_format(args, "subscribe", default="json")
    return run_subscribe(
        broker=args.broker,
        topic_filter=args.filter,
        count=args.count,
        timeout=args.timeout,
        output=args.output,
        dedup=args.dedup,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        client_id=args.client_id,
        protocol=args.protocol,
        max_packet_size=args.max_packet_size,
        fmt=fmt,
        color=args.color,
        host_glob=args.host,
        failed_only=args.failed,
        metrics_listen=args.metrics,
    )


class FlagConflict(Exception):
    """Two flags that ask for different things (one line, exit status 2)."""


def _text_format(args: argparse.Namespace, command: str, default: str) -> Any:
    """--json is --format json; with another --format it is refused, not silently chosen."""
    if args.json and args.format not in (None, "json"):
        raise FlagConflict(
            f"procmon {command}: --json and --format {args.format} conflict: give one of them"
        )
    return "json" if args.json else (args.format or default)


# --- check / schema ------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from procmon import preflight
    from procmon.probe import choose_backend

    lines = preflight.host_lines()
    backend = choose_backend(args.backend)
    if backend == "bcc":  # bcc's own preconditions first: the probe line needs all of them
        lines += preflight.bcc_lines()
    lines.append(preflight.probe_line(backend))
    if args.broker:
        from procmon.mqtt.check import broker_line

        lines.append(
            broker_line(
                args.broker,
                args.username,
                args.password_file,
                args.ca_file,
                args.cert_file,
                args.key_file,
            )
        )
    for line in lines:
        print(line.render())
    return EXIT_OK if all(line.ok for line in lines) else EXIT_FAILURE


def cmd_schema(args: argparse.Namespace) -> int:
    if args.config_reference:
        from procmon.config_doc import config_reference

        sys.stdout.write(config_reference())
        return EXIT_OK
    from procmon.schema import exit_event_schema

    print(json.dumps(exit_event_schema(), indent=2, sort_keys=False))
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procmon",
        description=__doc__,
        epilog=EXAMPLES["procmon"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"procmon {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log lines on stderr from this level up (default: warning; for agent, the "
        "config's log_level, itself info by default); refused by commands that log nothing",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tail = _command(sub, "tail", "stream process exits from this host")
    tail.add_argument("--json", action="store_true", help="one JSON event per line (--format json)")
    _add_format(tail, "human")
    tail.add_argument("--failed", action="store_true", help="only non-zero exits and signals")
    tail.add_argument("--per-thread", action="store_true", help="every thread exit")
    tail.add_argument(
        "--no-context", action="store_true", help="no exe, args, cgroup path, unit or container"
    )
    tail.add_argument("--no-args", action="store_true", help="exe and cgroup, but no args")
    tail.add_argument("--pidns-scope", action="store_true", help="only this pid namespace")
    tail.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N events (after filters)"
    )
    tail.add_argument("--kmsg", action="store_true", help="also write seed lines to /dev/kmsg")
    tail.add_argument(
        "--backend",
        choices=["auto", "core", "bcc"],
        default="auto",
        help="core: the CO-RE object (needs BTF); bcc: compiled here against kernel headers; "
        "auto: core where /sys/kernel/btf/vmlinux exists, else bcc (default: auto)",
    )
    tail.add_argument(
        "--host-id", metavar="NAME", help="host name to put in events (default: hostname)"
    )
    tail.add_argument(
        "--ring-size-kb",
        type=_positive_int,
        default=4096,
        metavar="KB",
        help="the kernel ring buffer, rounded up to a power of two; a bigger ring loses "
        "nothing in longer bursts (default: 4096)",
    )
    kernel = tail.add_argument_group("filters in the kernel (as exitsnoop's -p and -c)")
    kernel.add_argument(
        "--pid", type=_positive_int, help="only the exit of this process (its pid on this host)"
    )
    kernel.add_argument(
        "--cgroup",
        metavar="PATH",
        help="only processes in this cgroup v2 or below it: a path as events name it "
        "(/system.slice/nginx.service) or its directory under the cgroup2 mount",
    )
    user = tail.add_argument_group("filters in userspace (all given must match)")
    user.add_argument("--comm", metavar="REGEX", help="only processes whose comm matches REGEX")
    user.add_argument("--uid", metavar="UID", help="only processes of this uid or user name")
    user.add_argument(
        "--unit", metavar="UNIT", help="only this systemd unit (a glob: 'session-*.scope')"
    )
    user.add_argument(
        "--container", metavar="ID", help="only this container id, or its prefix (12+ chars)"
    )
    tail.set_defaults(func=cmd_tail)

    agent = _command(sub, "agent", "publish every exit to MQTT (the per-host daemon)")
    agent.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML file (default /etc/procmon/agent.toml, if it exists)",
    )
    agent.add_argument(
        "--broker",
        metavar="URL",
        help="the MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT (overrides mqtt.broker"
        " and mqtt.brokers)",
    )
    agent.add_argument(
        "--host-id", metavar="NAME", help="topic level for this host (default: hostname)"
    )
    agent.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    agent.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (file, environment, flags) as TOML, "
        "secrets masked, and exit",
    )
    agent.set_defaults(func=cmd_agent)

    subscribe = sub.add_parser(
        "subscribe",
        help="validated exits from the bus: JSON lines, or lines a person reads",
        description="Read exits from MQTT, validate each against the ExitEvent model, and "
        "write them out. Invalid, spoofed, retained and oversized messages are counted and "
        "skipped; the counts are printed on stderr at the end.",
        epilog=EXAMPLES["subscribe"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subscribe.add_argument(
        "filter",
        nargs="?",
        default="procmon/+/exits",
        help="MQTT topic filter (default procmon/+/exits; $share/GROUP/procmon/+/exits splits "
        "the stream across consumers)",
    )
    subscribe.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        metavar="URL",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883)",
    )
    subscribe.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit after N events written"
    )
    subscribe.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="exit after S seconds (status 1 if --count was not reached)",
    )
    subscribe.add_argument(
        "--output", type=Path, metavar="FILE", help="append lines to FILE (default stdout)"
    )
    subscribe.add_argument("--json", action="store_true", help="JSON lines (--format json)")
    _add_format(subscribe, "json")
    subscribe.add_argument(
        "--host", metavar="GLOB", help="only hosts matching GLOB (shell pattern, e.g. 'web-*')"
    )
    subscribe.add_argument(
        "--failed", action="store_true", help="only failures: a non-zero exit code or a signal"
    )
    subscribe.add_argument(
        "--dedup", action="store_true", help="drop repeated (host, event_id) pairs (re-sends)"
    )
    subscribe.add_argument(
        "--client-id",
        metavar="ID",
        help="a persistent session: the broker keeps events while you are away",
    )
    subscribe.add_argument(
        "--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)"
    )
    subscribe.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics here: exits by host, unit and outcome, agents' drop "
        "counters, hosts online (a bare PORT means 127.0.0.1)",
    )
    subscribe.add_argument(
        "--max-packet-size",
        type=_positive_int,
        default=1 << 20,
        metavar="BYTES",
        help="larger messages are dropped unread and counted (default 1 MiB; MQTT 5 tells "
        "the broker)",
    )
    _add_auth(subscribe)
    subscribe.set_defaults(func=cmd_subscribe)

    check = _command(sub, "check", "preflight: can this host run the probe?")
    check.add_argument(
        "--backend",
        choices=["auto", "core", "bcc"],
        default="auto",
        help="the probe backend to try (default: auto, as the agent picks it)",
    )
    check.add_argument(
        "--broker", metavar="URL", help="also test this broker's connectivity and credentials"
    )
    _add_auth(check)
    check.set_defaults(func=cmd_check)

    schema = _command(sub, "schema", "print the ExitEvent JSON Schema")
    schema.add_argument(
        "--config-reference",
        action="store_true",
        help="print the agent's configuration reference (docs/config.md) instead",
    )
    schema.set_defaults(func=cmd_schema)
    return parser


def _add_format(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--format",
        choices=["human", "json", "seed"],
        help=f"human: one line per exit; json: one event per line; seed: the kernel "
        f"module's PROCESS_MONITOR lines (default {default})",
    )
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour failures in the human format (default auto: on a terminal, unless "
        "NO_COLOR is set)",
    )


EXAMPLES: dict[str, str] = {
    "procmon": """examples:
  procmon tail --failed                 this host's failed exits, as they happen
  procmon check --broker mqtts://mq:8883 can this host run the agent?
  procmon agent --config /etc/procmon/agent.toml
  procmon subscribe --dedup             the fleet's exits from the bus, as JSON lines
  procmon COMMAND --help                each command's flags and examples""",
    "tail": """examples:
  procmon tail --failed                       non-zero exits and signals, one line each
  procmon tail --json --count 100 > exits.jsonl
  procmon tail --cgroup /system.slice/nginx.service
  procmon tail --pid 4242 --count 1           wait for one process to end, see why
  procmon tail --comm '^(python|node)' --uid www-data
  procmon tail --unit 'session-*.scope' --format seed""",
    "agent": """examples:
  procmon agent --config /etc/procmon/agent.toml
  procmon agent --broker mqtt://127.0.0.1:1883 --host-id web1
  procmon agent --config agent.toml --check-config   validate, then exit
  procmon agent --config agent.toml --print-config   the effective TOML, secrets masked
  PROCMON_MQTT__BROKER=mqtts://mq:8883 procmon --log-level debug agent""",
    "check": """examples:
  procmon check                         BTF, tracefs, privilege, libbpf, probe attach
  procmon check --backend bcc           bcc, kernel headers and the offset guard
  procmon check --broker mqtts://mq:8883 --username web1 --password-file /etc/procmon/pw \\
      --ca-file /etc/procmon/ca.pem""",
    "schema": """examples:
  procmon schema > exit-event.v1.json
  procmon schema | jq '.properties | keys'
  procmon schema --config-reference > docs/config.md""",
    "subscribe": """examples:
  procmon subscribe --format human                     # watch every host's exits
  procmon subscribe --format human --failed --host 'web-*'
  procmon subscribe --client-id central --dedup --output /var/log/procmon/exits.jsonl
  procmon subscribe '$share/central/procmon/+/exits' --client-id central-2 --output exits.jsonl
  procmon subscribe --metrics 127.0.0.1:9470 --output /dev/null   # Prometheus scrapes :9470
  procmon subscribe --broker mqtts://broker:8883 --ca-file ca.crt --username central \\
      --password-file /etc/procmon/central.pw""",
}


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples (kept as written)."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_auth(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("broker credentials and TLS")
    auth.add_argument("--username", metavar="NAME", help="MQTT user name")
    auth.add_argument(
        "--password-file",
        type=Path,
        metavar="PATH",
        help="file holding the password (refused when others can read it; never on argv)",
    )
    auth.add_argument(
        "--ca-file",
        type=Path,
        metavar="PATH",
        help="CA certificate(s) to verify an mqtts:// broker",
    )
    auth.add_argument(
        "--cert-file", type=Path, metavar="PATH", help="client certificate, for mutual TLS"
    )
    auth.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="the client certificate's key (refused when others can read it)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level and args.command in COMMANDS_WITHOUT_LOGS:
        parser.exit(
            EXIT_CONFIG,
            f"procmon: error: --log-level: `procmon {args.command}` logs nothing; drop the flag\n",
        )
    if args.command != "agent":  # the agent sets its level from its config and the flag
        setup_logging(args.log_level or "warning")
    from procmon.probe.libbpf import LibbpfError

    try:
        rc: int = args.func(args)
        return rc
    except (
        ConfigError,
        FilterError,
        CgroupTargetError,
        PermissionError,
        FileNotFoundError,
        LibbpfError,
        ProbeError,
        ImportError,
    ) as exc:
        print(f"procmon: error: {exc}", file=sys.stderr)
        usage = (ConfigError, FilterError, CgroupTargetError)
        return EXIT_CONFIG if isinstance(exc, usage) else EXIT_FAILURE
    except FlagConflict as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
