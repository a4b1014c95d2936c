"""docker-compose.yml, the Dockerfile and the Prometheus/Grafana files they mount.

No container engine runs here or in CI, so nothing is built or started. What is checked:

- ``docker-compose config -q`` (Debian's Compose v1, from ``make tools``) accepts the file,
  with the defaults and with the production variables; its resolved output (YAML, read
  with the PyYAML that docker-compose itself depends on, by its own interpreter) is what
  the structural checks look at: services, host networking, bind mounts that exist in the
  repo and are read-only, pinned images, the stop grace period against ``drain_timeout_s``;
- Prometheus as mounted: the bind mounts are reproduced in a temporary directory and
  ``promtool check config`` runs on the config path the container is given, so
  ``rule_files`` must resolve there; the scrape target is the admin listener of the config
  the sipedge service runs;
- Grafana: the provisioned datasource's uid is what the dashboard's datasource variable
  selects, its URL is Prometheus's listen address, the dashboard provider reads the
  directory the dashboard JSON is mounted in;
- the Dockerfile by its instructions (non-root USER, ENTRYPOINT, CMD, EXPOSE, STOPSIGNAL,
  ``pip install .``), and its HEALTHCHECK command run for real against an admin listener;
- the README's keepalived check script (curl) against a live admin listener: it keeps the
  address while no gateway is up, gives it up when draining or not answering.

Not checked (no engine): that the image builds, that the containers start, that Grafana
renders the dashboard. A missing tool is a failure that names ``make tools``, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from sipedge.admin import AdminServer
from sipedge.config import load_config
from sipedge.sip.address import Endpoint
from sipedge.transport.driver import CoreDriver
from tests.helpers.wire import ProxyHarness

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = CONF / "grafana-dashboard.json"
PROVISIONING = CONF / "grafana" / "provisioning"
ADMIN_HOST = "127.0.0.220"
# Variables docker-compose.yml reads; the checks run without them (the defaults) unless set.
COMPOSE_VARS = ("SIPEDGE_CONF_DIR", "SIPEDGE_CONFIG", "GRAFANA_ADMIN_PASSWORD",
                "GRAFANA_ANONYMOUS")


# ---------------------------------------------------------------------------- tools


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is missing: run `make tools` (Debian package {package})")
    return path


def _compose_python() -> str:
    """The interpreter docker-compose (v1, a Python program) runs on: it has PyYAML."""
    script = Path(_tool("docker-compose", "docker-compose"))
    first = script.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("#!"), f"{script} is not the Debian docker-compose script"
    return shlex.split(first[2:])[0]


def from_yaml(text: str) -> Any:
    """YAML → Python, through docker-compose's own PyYAML (no dependency of ours for it)."""
    proc = subprocess.run(
        [_compose_python(), "-c",
         "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def compose(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in COMPOSE_VARS and not k.startswith("COMPOSE_")}
    clean.update(env or {})
    return subprocess.run(
        [_tool("docker-compose", "docker-compose"), "--project-directory", str(ROOT),
         "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120, check=False)


def resolved(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    proc = compose("config", env=env)
    assert proc.returncode == 0, proc.stderr
    model = from_yaml(proc.stdout)
    assert isinstance(model, dict)
    return model


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[Path, PurePosixPath, str]]:
    """(host source, container target, mode) for each bind mount (named volumes left out)."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), volume  # docker-compose v1 prints the short syntax
        source, target, *mode = volume.split(":")
        if source.startswith("/"):
            mounts.append((Path(source), PurePosixPath(target), mode[0] if mode else "rw"))
    return mounts


def host_path(service: Mapping[str, Any], container: PurePosixPath) -> Path:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    for source, target, _ in bind_mounts(service):
        if container == target:
            return source
        if target in container.parents:
            return source.joinpath(*container.relative_to(target).parts)
    raise AssertionError(f"{container} is not under any bind mount of {service}")


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match[1] or 0) * 60 + int(match[2] or 0)


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return resolved()


def sipedge_config_path(model: Mapping[str, Any]) -> Path:
    service = model["services"]["sipedge"]
    command = service["command"]
    assert command[:2] == ["run", "--config"], command
    return host_path(service, PurePosixPath(command[2]))


# ---------------------------------------------------------------------------- compose


def test_compose_config_validates() -> None:
    proc = compose("config", "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_services_all_on_host_network(model: dict[str, Any]) -> None:
    assert set(model["services"]) == {"sipedge", "prometheus", "grafana"}
    for name, service in model["services"].items():
        assert service["network_mode"] == "host", name  # SIP needs the real addresses
        assert service["restart"] == "unless-stopped", name
        assert "ports" not in service, name  # meaningless with host networking


def test_images_are_pinned(model: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in model["services"].items()}
    assert images["prometheus"].startswith("prom/prometheus:v2.")
    assert images["grafana"].startswith("grafana/grafana:")
    for name in ("prometheus", "grafana"):
        tag = images[name].rpartition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, tag)


def test_bind_mounts_are_read_only_repo_files(model: dict[str, Any]) -> None:
    count = 0
    for name, service in model["services"].items():
        for source, target, mode in bind_mounts(service):
            assert source.exists(), f"{name}: {source} does not exist"
            assert source.resolve().is_relative_to(CONF), f"{name}: {source} is not in conf/"
            assert mode == "ro", f"{name}: {source}:{target} is not read-only"
            count += 1
    assert count == 5
    named = {v.split(":")[0] for s in model["services"].values() for v in s.get("volumes", [])
             if not v.startswith("/")}
    assert named == set(model["volumes"]) == {"prometheus-data", "grafana-data"}


def test_sipedge_service_builds_the_dockerfile_and_runs_the_lab(model: dict[str, Any]) -> None:
    service = model["services"]["sipedge"]
    assert service["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile"}
    assert bind_mounts(service) == [(CONF, PurePosixPath("/etc/sipedge"), "ro")]
    config = sipedge_config_path(model)
    assert config == CONF / "lab.toml"
    admin = load_config(config).admin.listen
    assert admin is not None
    assert service["environment"]["SIPEDGE_ADMIN"] == admin.hostport  # the HEALTHCHECK's


def test_stop_grace_period_exceeds_drain_timeout(model: dict[str, Any]) -> None:
    service = model["services"]["sipedge"]
    assert service["stop_signal"] == "SIGTERM"
    grace = seconds(service["stop_grace_period"])
    assert grace == 45
    for name in ("lab.toml", "sipedge.toml"):
        drain = load_config(CONF / name).daemon.drain_timeout_s
        assert grace >= drain + 10, (name, drain)  # room for the last transactions and exit


def test_production_variables_mount_etc_sipedge(tmp_path: Path) -> None:
    (tmp_path / "sipedge.toml").write_text("", encoding="utf-8")
    env = {"SIPEDGE_CONF_DIR": str(tmp_path), "SIPEDGE_CONFIG": "sipedge.toml",
           "GRAFANA_ADMIN_PASSWORD": "s3cret", "GRAFANA_ANONYMOUS": "true"}
    assert compose("config", "-q", env=env).returncode == 0
    model = resolved(env)
    service = model["services"]["sipedge"]
    assert bind_mounts(service) == [(tmp_path, PurePosixPath("/etc/sipedge"), "ro")]
    assert service["command"] == dockerfile_json("CMD")  # the image's default
    grafana = model["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    defaults = resolved()["services"]["grafana"]["environment"]
    assert defaults["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    assert defaults["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


# ---------------------------------------------------------------------------- prometheus


def test_prometheus_config_as_mounted_passes_promtool(model: dict[str, Any],
                                                      tmp_path: Path) -> None:
    service = model["services"]["prometheus"]
    for source, target, _ in bind_mounts(service):
        dest = tmp_path / target.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, dest)
    config = tmp_path / PurePosixPath(flag(service["command"], "config.file")).relative_to("/")
    assert config.exists(), f"--config.file {config} is not mounted"
    proc = subprocess.run([_tool("promtool", "prometheus"), "check", "config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout
    assert "SUCCESS: 9 rules found" in proc.stdout


def test_prometheus_scrapes_the_admin_listener_of_the_config_run(model: dict[str, Any]) -> None:
    service = model["services"]["prometheus"]
    prom = from_yaml(host_path(service, PurePosixPath(flag(service["command"], "config.file")))
                     .read_text(encoding="utf-8"))
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "sipedge"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    admin = load_config(sipedge_config_path(model)).admin.listen
    assert admin is not None
    assert targets == [admin.hostport]
    assert job["metrics_path"] == "/metrics"
    assert flag(service["command"], "storage.tsdb.path") == "/prometheus"
    assert "prometheus-data:/prometheus:rw" in service["volumes"]


# ---------------------------------------------------------------------------- grafana


def grafana_files(model: Mapping[str, Any]) -> tuple[Mapping[str, Any], Path, Path]:
    service = model["services"]["grafana"]
    provisioning = host_path(service, PurePosixPath("/etc/grafana/provisioning"))
    assert provisioning == PROVISIONING
    return service, provisioning / "datasources" / "prometheus.yml", \
        provisioning / "dashboards" / "sipedge.yml"


def test_grafana_datasource_is_prometheus_as_run(model: dict[str, Any]) -> None:
    _, datasources, _ = grafana_files(model)
    text = datasources.read_text(encoding="utf-8")
    assert "$" not in text  # Grafana expands environment variables in provisioning files
    provisioned = from_yaml(text)
    assert provisioned["apiVersion"] == 1
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    listen = flag(model["services"]["prometheus"]["command"], "web.listen-address")
    assert source["url"] == f"http://{listen}"
    assert source["access"] == "proxy"


def test_grafana_datasource_uid_is_the_dashboards(model: dict[str, Any]) -> None:
    _, datasources, _ = grafana_files(model)
    uid = from_yaml(datasources.read_text(encoding="utf-8"))["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # Provisioning ignores __inputs (that is the UI's Import), so ${DS_PROMETHEUS} must be a
    # dashboard variable of type datasource, whose default is the provisioned uid.
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert dashboard["templating"]["list"][0] is var  # defined before the variables using it
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    assert var["current"]["value"] == uid
    assert [i["name"] for i in dashboard["__inputs"]] == [var["name"]]
    refs = [p["datasource"] for p in dashboard["panels"]]
    refs += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]
             if "datasource" in t]
    refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert len(refs) > 40
    for ref in refs:
        assert ref == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, ref


def test_grafana_provider_reads_the_mounted_dashboard(model: dict[str, Any]) -> None:
    service, _, dashboards = grafana_files(model)
    (provider,) = from_yaml(dashboards.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    path = PurePosixPath(provider["options"]["path"])
    mounted = [(source, target) for source, target, _ in bind_mounts(service)
               if target.parent == path]
    assert mounted == [(DASHBOARD, path / "sipedge.json")]
    assert service["environment"]["GF_SECURITY_ADMIN_USER"] == "admin"
    assert "grafana-data:/var/lib/grafana:rw" in service["volumes"]


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    start = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[start:]


def dockerfile_json(keyword: str) -> list[str]:
    (args,) = [a for k, a in final_stage() if k == keyword]
    value = json.loads(args)
    assert isinstance(value, list), f"{keyword} is not in exec (JSON) form"
    return value


def test_dockerfile_bases_and_install() -> None:
    instructions = dockerfile()
    bases = [a.split()[0] for k, a in instructions if k == "FROM"]
    assert bases == ["python:3.11-slim", "python:3.11-slim"]
    runs = " ".join(a for k, a in instructions if k == "RUN")
    assert "python -m venv /opt/sipedge" in runs
    assert re.search(r"/opt/sipedge/bin/pip install \.( |$)", runs)
    assert not re.search(r"pip install[^&]*(-e\b|--editable|\[test\])", runs)
    assert ("COPY", "--from=build /opt/sipedge /opt/sipedge") in final_stage()


def test_dockerfile_runs_sipedge_as_a_non_root_user() -> None:
    stage = final_stage()
    users = [a for k, a in stage if k == "USER"]
    assert users == ["sipedge"]
    assert "useradd --system --uid" in " ".join(a for k, a in stage if k == "RUN")
    user_at = stage.index(("USER", "sipedge"))
    assert all(k != "RUN" for k, _ in stage[user_at:])  # nothing runs as root after it
    assert dockerfile_json("ENTRYPOINT") == ["/opt/sipedge/bin/sipedge"]
    assert dockerfile_json("CMD") == ["run", "--config", "/etc/sipedge/sipedge.toml"]


def test_dockerfile_ports_and_stop_signal() -> None:
    stage = final_stage()
    (expose,) = [a for k, a in stage if k == "EXPOSE"]
    assert set(expose.split()) == {"5060/udp", "5060/tcp", "5061/tcp", "9091/tcp"}
    assert ("STOPSIGNAL", "SIGTERM") in stage
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "stop_grace_period" in text and "drain_timeout_s" in text


def test_dockerfile_copies_only_what_dockerignore_keeps() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "**/__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
            ".hypothesis", "*.egg-info"} <= ignored
    sources = []
    for keyword, args in dockerfile():
        if keyword == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"


def healthcheck() -> tuple[dict[str, str], list[str]]:
    (args,) = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    opts = dict(o.removeprefix("--").split("=") for o in options.split())
    return opts, json.loads(command)


def test_healthcheck_options() -> None:
    opts, command = healthcheck()
    assert set(opts) == {"interval", "timeout", "start-period", "retries"}
    assert seconds(opts["timeout"]) < seconds(opts["interval"])
    assert command[:2] == ["/opt/sipedge/bin/python", "-c"] and len(command) == 3
    assert "/healthz" in command[2] and "curl" not in command[2]


async def test_healthcheck_command_asks_the_admin_listener() -> None:
    _, command = healthcheck()
    h = ProxyHarness()
    driver = CoreDriver(h.core, asyncio.get_running_loop(), lambda event: None)
    server = AdminServer(driver)
    bound = await server.start(Endpoint("tcp", ADMIN_HOST, 0))

    async def run_check(admin: str) -> int:
        # The venv's python in the image; this venv's here (same code, same stdlib).
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", command[2], env={**os.environ, "SIPEDGE_ADMIN": admin},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        assert await run_check(bound.hostport) == 0
    finally:
        await server.aclose()
        driver.close()
    assert await run_check(bound.hostport) != 0  # nothing listens any more


# ---------------------------------------------------------------------------- README: HA


def readme_check_script() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(#!/bin/sh\n# /etc/keepalived/sipedge-check.*?)```", text, re.S)
    assert len(blocks) == 1, "README: the keepalived check script block"
    return blocks[0]


async def test_readme_keepalived_check_gives_up_the_address_only_when_down_or_draining() -> None:
    script = readme_check_script()
    assert "http://127.0.0.1:9091/readyz" in script
    h = ProxyHarness()
    driver = CoreDriver(h.core, asyncio.get_running_loop(), lambda event: None)
    server = AdminServer(driver)
    bound = await server.start(Endpoint("tcp", ADMIN_HOST, 0))
    local = script.replace("127.0.0.1:9091", bound.hostport)
    env = {**os.environ, "PATH": f"{Path(_tool('curl', 'curl')).parent}:{os.environ['PATH']}"}

    async def check() -> int:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", local, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        # A standby: no gateway up (its probe replies go to the holder), /readyz 503; it
        # must still be able to take the address.
        assert not h.core.is_ready()
        assert await check() == 0
        h.core.set_draining(True)
        assert await check() == 1
        h.core.set_draining(False)
        assert await check() == 0
    finally:
        await server.aclose()
        driver.close()
    assert await check() == 1  # sipedge not answering
