"""From the config to the parts: the only place that maps config sections to the plain values
the probe, enrichment and pipeline take, shared by `procmon agent` and `procmon tail`."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

from procmon.config import EnrichConfig, ProbeConfig
from procmon.enrich.context import ContextSettings, ProcessContext, open_context
from procmon.event import EventBuilder
from procmon.pipeline import BurstPolicy
from procmon.probe import Probe, ProbeKnobs, open_probe
from procmon.probe.cgroup_target import CgroupTarget
from procmon.probe.knobs import own_pidns_inode, power_of_two


def probe_knobs(cfg: ProbeConfig, enrich: EnrichConfig) -> ProbeKnobs:
    return ProbeKnobs(
        per_thread=cfg.per_thread,
        failed_only=cfg.failed_only,
        target_pidns=own_pidns_inode() if cfg.pidns_scope else 0,
        self_tgid=os.getpid() if cfg.exclude_self else 0,
        self_pidns=own_pidns_inode(),
        wakeup_bytes=cfg.wakeup_bytes,
        wakeup_ns=cfg.wakeup_latency_ms * 1_000_000,
        ring_size_bytes=power_of_two(cfg.ring_size_kb * 1024),
        capture_exec=enrich.enabled,
        capture_args=enrich.enabled and enrich.capture_args,
        context_fill_pct=cfg.context_fill_pct,
        capture_killer=cfg.capture_killer,
    )


def context_settings(enrich: EnrichConfig) -> ContextSettings:
    return ContextSettings(
        capture_args=enrich.capture_args,
        redact=enrich.redact + enrich.redact_extra,
        redact_value_after=enrich.redact_value_after,
        exec_cache_size=enrich.exec_cache_size,
        cgroup_cache_size=enrich.cgroup_cache_size,
        cgroup_grace_s=enrich.cgroup_grace_s,
    )


def burst_policy(cfg: ProbeConfig) -> BurstPolicy:
    return BurstPolicy(
        rate=cfg.burst_rate, max_s=cfg.burst_max_ms / 1000, fill=cfg.burst_fill_pct / 100
    )


def attach_probe(
    cfg: ProbeConfig,
    enrich: EnrichConfig,
    target_tgid: int = 0,
    cgroup: CgroupTarget | None = None,
) -> Probe:
    """``target_tgid`` and ``cgroup``: `procmon tail --pid/--cgroup`, filtered in the kernel."""
    knobs = probe_knobs(cfg, enrich)
    if target_tgid or cgroup is not None:
        knobs = dataclasses.replace(
            knobs,
            target_tgid=target_tgid,
            target_cgroup=cgroup.cgroup_id if cgroup else 0,
            target_cgroup_level=cgroup.level if cgroup else 0,
        )
    return open_probe(cfg.backend, knobs, cfg.pin_dir)


def attach_context(enrich: EnrichConfig, probe: Probe) -> ProcessContext | None:
    """A seeded context once ``probe`` is attached; None when enrichment is off or the probe
    sends no context records."""
    if not (enrich.enabled and probe.has_context):
        return None
    return open_context(context_settings(enrich))


def event_builder(host_id: str, probe: Probe, context: ProcessContext | None) -> EventBuilder:
    backend: Literal["core", "bcc"]
    if probe.backend == "core":
        backend = "core"
    elif probe.backend == "bcc":
        backend = "bcc"
    else:
        raise ValueError(f"unknown probe backend {probe.backend!r}")
    return EventBuilder(host_id, backend, context=context)
