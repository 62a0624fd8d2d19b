"""The Ansible collection's metadata and the agent role's templates, without running Ansible.

The collection is deployed for real by tests/system/test_fleet.py; these catch a stale version,
a role not reachable by its FQCN, defaults that disagree with the argument specs, and the
[metrics] section rendered when it should not be.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

import procmon
from helpers.common import REPO

COLLECTION = REPO / "ansible"
AGENT = COLLECTION / "roles" / "agent"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_galaxy_names_the_collection_and_follows_the_package_version() -> None:
    galaxy = _yaml(COLLECTION / "galaxy.yml")
    assert (galaxy["namespace"], galaxy["name"]) == ("procmon", "procmon")
    assert galaxy["version"] == procmon.__version__


def test_deploy_playbook_uses_the_roles_by_fqcn() -> None:
    plays = _yaml(COLLECTION / "playbooks" / "deploy.yml")
    roles = [role["role"] for play in plays for role in play["roles"]]
    assert roles == ["procmon.procmon.broker", "procmon.procmon.agent"]
    for role in ("agent", "broker"):
        for part in ("tasks/main.yml", "meta/argument_specs.yml", "defaults/main.yml"):
            assert (COLLECTION / "roles" / role / part).is_file(), (role, part)


@pytest.mark.parametrize("role", ["agent", "broker"])
def test_argument_specs_defaults_match_the_role_defaults(role: str) -> None:
    specs = _yaml(COLLECTION / "roles" / role / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"]["options"]
    defaults = _yaml(COLLECTION / "roles" / role / "defaults" / "main.yml")
    assert set(options) == set(defaults), set(options) ^ set(defaults)
    for name, spec in options.items():
        if "default" in spec:
            assert spec["default"] == defaults[name], name


def _render_agent_toml(**overrides: Any) -> dict[str, Any]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes")
    variables = {
        **_yaml(AGENT / "defaults" / "main.yml"),
        "procmon_agent_host_id": "web1",
        "ansible_managed": "managed",
        "__procmon_agent_backend": "core",
        "__procmon_agent_state_dir": "/var/lib/procmon",
        "__procmon_agent_password_file": "/etc/procmon/mqtt-password",
        **overrides,
    }
    text = env.from_string((AGENT / "templates" / "agent.toml.j2").read_text()).render(variables)
    return tomllib.loads(text)


def test_metrics_section_only_when_a_metrics_variable_is_set() -> None:
    assert "metrics" not in _render_agent_toml()
    listen = _render_agent_toml(procmon_agent_metrics_listen="127.0.0.1:9787")
    assert listen["metrics"] == {"listen": "127.0.0.1:9787"}
    both = _render_agent_toml(
        procmon_agent_metrics_listen=9787, procmon_agent_metrics_textfile="/var/lib/ne/procmon.prom"
    )
    assert both["metrics"] == {"listen": "9787", "textfile": "/var/lib/ne/procmon.prom"}


def test_brokers_list_replaces_the_single_broker_and_loads_as_config() -> None:
    from procmon.config import AgentConfig

    single = _render_agent_toml()["mqtt"]
    assert "brokers" not in single and single["broker"] == "mqtts://127.0.0.1:8883"
    urls = ["mqtts://a.example:8883", "mqtts://b.example:8883"]
    failover = _render_agent_toml(procmon_agent_mqtt_brokers=urls)
    assert "broker" not in failover["mqtt"] and failover["mqtt"]["brokers"] == urls
    assert AgentConfig.model_validate(failover).mqtt.broker_urls == tuple(urls)


def test_install_method_defaults_to_deb_when_a_deb_is_given() -> None:
    """vars/main.yml's choice, evaluated with plain Jinja."""
    text = (AGENT / "vars" / "main.yml").read_text()
    expr = re.search(r"__procmon_agent_method: >-\n((?:  .*\n)+)", text)
    assert expr, "no __procmon_agent_method in vars/main.yml"
    template = jinja2.Environment().from_string(" ".join(expr[1].split()))

    def method(**v: str) -> str:
        base = {"procmon_agent_install_method": "auto", "procmon_agent_deb": ""}
        return template.render({**base, "procmon_agent_wheel": "", **v}).strip()

    assert method(procmon_agent_deb="p_0.1.0-1_amd64.deb", procmon_agent_wheel="w.whl") == "deb"
    assert method(procmon_agent_wheel="procmon-0.1.0-py3-none-any.whl") == "wheel"
    assert method() == "pip"
    assert method(procmon_agent_install_method="pip", procmon_agent_deb="x.deb") == "pip"
