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
from procmon.exit_status import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from procmon.logs import setup_logging
from procmon.probe.errors import ProbeError
from procmon.signals import Signals

log = logging.getLogger("procmon")


# --- tail ----------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    from procmon.assemble import attach_context, attach_probe, event_builder
    from procmon.pipeline import Pipeline
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
    with Signals() as stop:
        probe = attach_probe(cfg, enrich)
        log.info("attached %s backend in %.3f s", probe.backend, probe.attach_seconds)
        color = use_color(args.color, sys.stdout)
        sinks: list[Sink] = [StdoutSink(fmt, sys.stdout.buffer, color)]
        if args.kmsg:
            sinks.append(KmsgSink())
        builder = event_builder(args.host_id or _hostname(), probe, attach_context(enrich, probe))
        pipeline = Pipeline(probe, builder, sinks, cfg.poll_interval_ms, max_events=args.count)
        with contextlib.suppress(BrokenPipeError):  # the reader went away (`| head`): stop quietly
            pipeline.run(stop)
    print(
        f"Total process exits monitored: {pipeline.counters.events_seen} (dropped in kernel: "
        f"{pipeline.kernel_drops()}; context lost: {pipeline.context_drops()})",
        file=sys.stderr,
    )
    return EXIT_OK


def _hostname() -> str:
    import socket

    return socket.gethostname()


# --- agent / subscribe ---------------------------------------------------------------------


def _agent_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["mqtt"] = {"broker": args.broker}
    if args.host_id:
        overrides["host_id"] = args.host_id
    return overrides


def cmd_agent(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _agent_overrides(args))
    if args.check_config:
        print(
            f"config ok: host_id={cfg.host_id} broker={cfg.mqtt.broker} probe={cfg.probe.backend}"
        )
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
        from procmon.mqtt_check import broker_line

        lines.append(broker_line(args.broker, args.username, args.password_file, args.ca_file))
    for line in lines:
        print(line.render())
    return EXIT_OK if all(line.ok for line in lines) else EXIT_FAILURE


def cmd_schema(_args: argparse.Namespace) -> int:
    from procmon.schema import exit_event_schema

    print(json.dumps(exit_event_schema(), indent=2, sort_keys=False))
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procmon", description=__doc__)
    parser.add_argument("--version", action="version", version=f"procmon {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)

    tail = sub.add_parser("tail", help="stream process exits from this host")
    tail.add_argument("--json", action="store_true", help="one JSON event per line (--format json)")
    _add_format(tail, "human")
    tail.add_argument("--failed", action="store_true", help="only non-zero exits and signals")
    tail.add_argument("--per-thread", action="store_true", help="every thread exit")
    tail.add_argument(
        "--no-context", action="store_true", help="no exe, args, cgroup path, unit or container"
    )
    tail.add_argument("--no-args", action="store_true", help="exe and cgroup, but no args")
    tail.add_argument("--pidns-scope", action="store_true", help="only this pid namespace")
    tail.add_argument("--count", type=_positive_int, help="stop after N events")
    tail.add_argument("--kmsg", action="store_true", help="also write seed lines to /dev/kmsg")
    tail.add_argument("--backend", choices=["auto", "core", "bcc"], default="auto")
    tail.add_argument("--host-id", help="host name to put in events (default: hostname)")
    tail.add_argument("--ring-size-kb", type=_positive_int, default=4096)
    tail.set_defaults(func=cmd_tail)

    agent = sub.add_parser("agent", help="publish every exit to MQTT (the per-host daemon)")
    agent.add_argument("--config", type=Path, help="TOML file (default /etc/procmon/agent.toml)")
    agent.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    agent.add_argument("--host-id", help="topic level for this host (default: hostname)")
    agent.add_argument("--check-config", action="store_true", help="validate and exit")
    agent.set_defaults(func=cmd_agent)

    subscribe = sub.add_parser(
        "subscribe",
        help="validated exits from the bus: JSON lines, or lines a person reads",
        description="Read exits from MQTT, validate each against the ExitEvent model, and "
        "write them out. Invalid, spoofed, retained and oversized messages are counted and "
        "skipped; the counts are printed on stderr at the end.",
        epilog=SUBSCRIBE_EXAMPLES,
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
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883)",
    )
    subscribe.add_argument("--count", type=_positive_int, help="exit after N events written")
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

    check = sub.add_parser("check", help="preflight: can this host run the probe?")
    check.add_argument("--backend", choices=["auto", "core", "bcc"], default="auto")
    check.add_argument("--broker", help="also test this broker's connectivity and credentials")
    _add_auth(check)
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the ExitEvent JSON Schema")
    schema.set_defaults(func=cmd_schema)
    return parser


SUBSCRIBE_EXAMPLES = """\
examples:
  procmon subscribe --format human                     # watch every host's exits
  procmon subscribe --format human --failed --host 'web-*'
  procmon subscribe --client-id central --dedup --output /var/log/procmon/exits.jsonl
  procmon subscribe '$share/central/procmon/+/exits' --client-id central-2 --output exits.jsonl
  procmon subscribe --metrics 127.0.0.1:9470 --output /dev/null   # Prometheus scrapes :9470
  procmon subscribe --broker mqtts://broker:8883 --ca-file ca.crt --username central \\
      --password-file /etc/procmon/central.pw
"""


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


def _add_auth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--username", help="MQTT user name")
    parser.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file holding the password (mode 0600)"
    )
    parser.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA certificate for mqtts:// (PEM)"
    )
    parser.add_argument(
        "--cert-file", type=Path, metavar="FILE", help="client certificate for mTLS (PEM)"
    )
    parser.add_argument(
        "--key-file", type=Path, metavar="FILE", help="client key for mTLS (PEM, mode 0600)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "agent":  # the agent's level comes from its config
        setup_logging(args.log_level)
    from procmon.probe.libbpf import LibbpfError

    try:
        rc: int = args.func(args)
        return rc
    except (
        ConfigError,
        PermissionError,
        FileNotFoundError,
        LibbpfError,
        ProbeError,
        ImportError,
    ) as exc:
        print(f"procmon: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    except FlagConflict as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
