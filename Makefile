# procmon: `make demo` runs the agent with a local broker; `make test` runs every test.
# Both start from a fresh Debian 12 machine as root: `make setup` installs what they need.
# `make unit` runs tests/unit only: no root, apt, broker or eBPF, just the venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BPF_OUT := agent/procmon/probe/bpf
BPF_OBJ := $(BPF_OUT)/exit.bpf.o
VMLINUX := build/vmlinux.h
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool python3-venv python3-pip \
	mosquitto mosquitto-clients make gcc util-linux \
	systemd-container debootstrap openssh-client openssl shellcheck \
	qemu-system-x86 e2fsprogs python3-bpfcc linux-headers-amd64 nftables iproute2 \
	prometheus rabbitmq-server

.PHONY: setup apt venv bpf tracefs brokers demo test unit lint schema config-doc clean fleet-test vm-test bench bench-quick bench-context bench-storm bench-flood bench-event-cost bench-killer soak dist deb collection bench-subscribe bench-fleet

setup: apt venv bpf tracefs brokers
	$(PY) -m pip install -q -e '.[dev]'

# Classic tracepoints (the probe's fallback) need tracefs, pinned probes bpffs; systemd
# hosts mount both already.
tracefs:
	mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

apt: build/.apt-done
build/.apt-done:
	@mkdir -p build
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	@touch $@

# The system Python, so that a bcc backend (python3-bpfcc) is importable from the venv.
venv: $(VENV)/bin/python
$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -U pip

# The package and the dev tools in the venv, once, for `make unit` (which needs nothing else).
$(VENV)/bin/pytest: | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev]'

# The conformance suite's other brokers (tests/system/test_broker_conformance.py), pinned in
# tests/brokers/: aedes from npm (lockfile) and amqtt from PyPI in a venv of its own (it pins
# its own dependencies). RabbitMQ and mosquitto come from apt.
brokers: build/aedes/.done build/amqtt/.done
build/aedes/.done: tests/brokers/package.json tests/brokers/package-lock.json | build/.apt-done
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
	@mkdir -p build/aedes
	cp tests/brokers/package.json tests/brokers/package-lock.json build/aedes/
	cd build/aedes && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
build/amqtt/.done: tests/brokers/amqtt-requirements.txt | build/.apt-done
	/usr/bin/python3 -m venv build/amqtt
	build/amqtt/bin/pip install -q -r $<
	@touch $@

$(VMLINUX):
	@mkdir -p build
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@

# The bcc backend compiles its C text on the host at start-up: ship the source and the
# record layout it shares with the CO-RE program.
BCC_SRC := $(BPF_OUT)/exit.bcc.c $(BPF_OUT)/exit_record.h
$(BPF_OUT)/%: bpf/%
	@mkdir -p $(BPF_OUT)
	cp $< $@

bpf: $(BPF_OBJ) $(BPF_OBJ).sha256 $(BCC_SRC)
$(BPF_OBJ): bpf/exit.bpf.c bpf/exit_record.h $(VMLINUX)
	@mkdir -p $(BPF_OUT)
	clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -Ibuild -Ibpf -c $< -o $@.tmp
	llvm-strip -g $@.tmp  # CO-RE relocations live in .BTF.ext and survive stripping
	mv $@.tmp $@
# The object's checksum, shipped beside it in the wheel (and in dist/ by make dist).
$(BPF_OBJ).sha256: $(BPF_OBJ)
	cd $(BPF_OUT) && sha256sum exit.bpf.o > exit.bpf.o.sha256

demo: setup
	$(PY) -m procmon.demo

test: setup lint
	CI=$${CI:-} $(PY) -m pytest -ra

# tests/unit: no root, network, broker or eBPF (tests/system has those), so no apt and no set-up.
unit: $(VENV)/bin/pytest
	CI=$${CI:-} $(PY) -m pytest tests/unit -ra

# mypy, strict: the package and tests/ (pyproject's [tool.mypy] files), then bench/, which
# imports the tests' helpers.mosquitto.
lint:
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy
	MYPYPATH=tests $(VENV)/bin/mypy bench
	cd ansible && ../$(VENV)/bin/ansible-lint --project-dir .  # the collection root; ansible/.ansible-lint
	shellcheck tests/system/fleet/fleet.sh packaging/deb/build-deb.sh packaging/deb/postinst \
		packaging/deb/prerm packaging/deb/postrm

# procmon against exitsnoop, bpftrace and forkstat: bench/results.md and bench/results.png.
BENCH_APT := libbpf-tools bpftrace forkstat
bench: setup build/.bench-apt-done
	$(PY) bench/run.py
bench-quick: setup build/.bench-apt-done
	$(PY) bench/run.py --quick
# What enrichment costs: procmon with and without exec/cgroup context, interleaved, plus the
# per-program kernel cost of joining in userspace vs in the kernel (bench/join_cost.py).
bench-context: setup build/.bench-apt-done
	$(PY) bench/run.py --configs none,probe,probe-bare,full,full-bare --no-long \
		--results bench/context.md --plot bench/context.png --out bench/out/context
	$(PY) bench/join_cost.py
# What the killer programs (signal_generate, mark_victim) cost: the full pipeline with and
# without them, beside exitsnoop, interleaved.
bench-killer: setup build/.bench-apt-done
	$(PY) bench/run.py --configs none,full,full-nokiller,exitsnoop --no-long \
		--results bench/killer_cost.md --plot bench/killer_cost.png --out bench/out/killer
	$(PY) bench/prog_cost.py
# where a storm's cost goes: the same configurations with the monitor frozen during storms.
bench-storm: setup build/.bench-apt-done
	$(PY) bench/run.py --configs none,full,full-frozen,probe,probe-frozen,exitsnoop --no-long \
		--reps 3 --results bench/storm_cost.md --plot bench/storm_cost.png --out bench/out/storm
# An unprivileged user's floods (fork, exec, 511 args, 1 MB argv) for 60 s each, and the
# highest steady rate held with no exit lost: a section of bench/results.md.
bench-flood: setup
	$(PY) bench/flood.py
# One exec's cost on the draining thread (decode, redact, join), per argv shape: a section of
# bench/results.md.
bench-event-cost: setup
	$(PY) bench/event_cost.py
build/.bench-apt-done: build/.apt-done
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_APT)
	@touch $@

# bcc and CO-RE on Debian's 6.1 kernel with its headers, in qemu (also part of `make test`).
vm-test: setup
	CI=$${CI:-} $(PY) -m pytest -m vm -ra

# 30 minutes at 500 exits/s with the agent's RSS and CPU sampled: bench/soak.md (not in CI).
soak: setup
	$(PY) bench/soak.py

# `procmon subscribe` draining 30,000 queued events: before/after, --dedup, mosquitto_sub
# (bench/subscribe.md, bench/subscribe.png).
bench-subscribe: setup
	$(PY) bench/subscribe_throughput.py --rt

# Simulated hosts (the agent's MqttSink at R exits/s each) -> one mosquitto -> $share consumers:
# the capacity table and consumer scale-out (bench/fleet.md, bench/fleet.png; about 15 minutes).
bench-fleet: setup
	$(PY) bench/fleet.py

# Three systemd-nspawn hosts without PyPI, deployed from the built collection (procmon.procmon.deploy)
# and the .deb (also part of `make test`).
fleet-test: setup
	CI=$${CI:-} $(PY) -m pytest -m fleet -ra

# Release artifacts in dist/: the wheel and sdist with the CO-RE object inside (one object for
# every kernel with BTF: no compiler or BTF needed where they are installed), the object's
# sha256 (dist/exit.bpf.o.sha256, also procmon/probe/bpf/exit.bpf.o.sha256 in the wheel) and
# dist/SHA256SUMS of everything in dist/.
# DIST: the tests build into build/ instead.
DIST ?= dist
VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' agent/procmon/__init__.py)
WHEEL = $(DIST)/procmon-$(VERSION)-py3-none-any.whl
dist: bpf $(VENV)/bin/pytest
	rm -rf $(DIST)
	$(PY) -m build --outdir $(DIST) .
	cp $(BPF_OUT)/exit.bpf.o.sha256 $(DIST)/exit.bpf.o.sha256
	cd $(DIST) && sha256sum procmon* > SHA256SUMS

# dist/procmon_<version>-1_<arch>.deb: the agent in its own venv under /opt/procmon with every
# dependency inside, the unit, /usr/bin/procmon; depends on python3 and libbpf1 only.
deb: dist
	packaging/deb/build-deb.sh $(WHEEL) $(DIST) $(PY)
	cd $(DIST) && sha256sum procmon* > SHA256SUMS

# dist/procmon-procmon-<version>.tar.gz: the Ansible collection (roles procmon.procmon.agent and
# procmon.procmon.broker, playbook procmon.procmon.deploy).
collection: $(VENV)/bin/pytest
	@mkdir -p $(DIST)
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(DIST) ansible
	cd $(DIST) && sha256sum procmon* > SHA256SUMS

schema:
	$(VENV)/bin/procmon schema > schemas/exit-event.v1.json

# docs/config.md from the config model's field descriptions (a unit test fails when stale).
config-doc:
	$(VENV)/bin/procmon schema --config-reference > docs/config.md

clean:
	rm -rf build $(BPF_OUT)/*.o
