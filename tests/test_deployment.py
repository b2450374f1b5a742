"""Checks of the deployment files: docker-compose.yml, the Dockerfile, the
PostgreSQL init scripts, asterisk-conf/ (with asterisklint) and the Grafana
dashboard.

No container runs here. The compose file is read with PyYAML, and `docker
compose config` runs only where the compose plugin is installed. The SQL
scripts run on an embedded PostgreSQL of their own, because they create
cluster-wide roles.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pgserver
import pytest
import yaml

from engine import db
from engine.settings import SPECS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CONF = REPO / "asterisk-conf"
CONTRIB = REPO / "contrib"
DASHBOARD = CONTRIB / "grafana" / "callgate-dashboard.json"
INIT_SQL = CONTRIB / "postgres-init" / "01-callgate.sql"
GRANTS_SQL = CONTRIB / "postgres-grants.sql"
HEALTHCHECK = CONTRIB / "docker-healthcheck.py"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
METRIC_SOURCES = [REPO / "engine", REPO / "api", REPO / "agi"]

# Every port that docker-compose.yml publishes on the host, as
# (service, container port/protocol). docs/deployment.md lists the same.
DOCUMENTED_PORTS = {
    ("callgate", "8080/tcp"),
    ("asterisk", "5060/udp"),
    ("asterisk", "5060/tcp"),
    ("asterisk", "8089/tcp"),
    ("prometheus", "9090/tcp"),
    ("grafana", "3000/tcp"),
}

# ${NAME:-default} and ${NAME}, as compose interpolates them.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(text: str) -> str:
    """Replace each ${NAME:-default} with its default, as with no .env file."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping, defaults interpolated."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value)) for key, value in raw.items()}


def conf_section(path: Path, section: str) -> dict[str, str]:
    """Read the `key = value` lines of one section of an Asterisk config file."""
    values: dict[str, str] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(";", 1)[0].strip()
        if line.startswith("[") and "]" in line:
            current = line[1 : line.index("]")]
        elif current == section and "=" in line and "=>" not in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


# ---------------------------------------------------------------- compose file


def test_compose_has_services(services):
    for name in ("postgres", "callgate", "asterisk", "migrate", "asterisk-grants"):
        assert name in services, f"service {name} missing"
    assert services["postgres"]["image"] == "postgres:16"
    assert services["asterisk"]["image"].startswith("andrius/asterisk:22")
    assert services["callgate"]["build"]["context"] == "."


def test_compose_healthchecks(services):
    postgres = services["postgres"]["healthcheck"]["test"]
    assert postgres[:2] == ["CMD", "pg_isready"]
    # Over TCP, so the check fails while the init scripts still run.
    assert "--host=127.0.0.1" in postgres
    callgate = services["callgate"]["healthcheck"]["test"]
    assert callgate == ["CMD", "python", "/usr/local/bin/callgate-healthcheck"]
    asterisk = services["asterisk"]["healthcheck"]["test"]
    assert asterisk == ["CMD", "asterisk", "-rx", "core show uptime"]


def test_compose_asterisk_conf_mount(services):
    assert "./asterisk-conf:/etc/asterisk:ro" in services["asterisk"]["volumes"]


def test_compose_postgres_init_mount(services):
    volumes = services["postgres"]["volumes"]
    assert "./contrib/postgres-init:/docker-entrypoint-initdb.d:ro" in volumes
    assert (
        "./contrib/postgres-grants.sql:/grants.sql:ro"
        in (services["asterisk-grants"]["volumes"])
    )


def test_compose_start_order(services):
    def conditions(name: str) -> dict[str, str]:
        return {
            dependency: entry["condition"]
            for dependency, entry in services[name]["depends_on"].items()
        }

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("asterisk-grants") == {
        "migrate": "service_completed_successfully"
    }
    assert conditions("callgate") == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    # cdr_pgsql does not load without the cdr table, and the asterisk role
    # cannot read the views before the grants: both one-shots end first.
    assert conditions("asterisk") == {
        "postgres": "service_healthy",
        "asterisk-grants": "service_completed_successfully",
        "callgate": "service_started",
    }
    assert services["migrate"]["command"] == ["callgate", "migrate"]
    assert services["callgate"]["command"] == ["callgate", "serve"]


def test_compose_monitoring_profile(services):
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for name in ("postgres", "callgate", "asterisk", "migrate", "asterisk-grants"):
        assert "profiles" not in services[name], f"{name} must always start"


def published_ports(services: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Return (service, host address, host port, container port/protocol)."""
    found = []
    for name, service in services.items():
        for entry in service.get("ports", []):
            assert isinstance(entry, str), f"{name}: use the short port syntax"
            mapping, _, protocol = interpolate(entry).partition("/")
            address, host_port, container_port = mapping.rsplit(":", 2)
            found.append(
                (name, address, host_port, f"{container_port}/{protocol or 'tcp'}")
            )
    return found


def test_compose_ports_documented(services):
    ports = published_ports(services)
    assert {(name, target) for name, _, _, target in ports} == DOCUMENTED_PORTS
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for name, _, host_port, target in ports:
        row = f"| `{name}` | `{host_port}/{target.split('/')[1]}` |"
        assert row in doc, f"docs/deployment.md lacks the port row {row}"


def test_compose_ports_loopback_default(services):
    for name, address, host_port, target in published_ports(services):
        assert address == "127.0.0.1", f"{name} {target} binds {address}"
        assert host_port == target.split("/")[0], f"{name} remaps {target}"


def test_compose_callgate_settings_exist(services):
    known = {spec.env: spec for spec in SPECS}
    for name, service in services.items():
        for key, value in environment(service).items():
            if not key.startswith("CALLGATE_"):
                continue
            assert key in known, f"{name}: {key} is not a callgate setting"
            # The value as the compose defaults leave it must parse, too.
            known[key].parse(value)


def test_compose_callgate_environment(services):
    env = environment(services["callgate"])
    assert env["CALLGATE_AGI_LISTEN"] == "0.0.0.0:4573"
    assert env["CALLGATE_API_LISTEN"] == "0.0.0.0:8080"
    assert env["CALLGATE_AMI_URL"] == "ami://callgate:change-me@asterisk:5038"
    assert env["CALLGATE_NODE"] == "node1"
    url = env["CALLGATE_DATABASE_URL"]
    assert url == "postgresql://callgate:change-me@postgres:5432/callgate"
    assert environment(services["migrate"])["CALLGATE_DATABASE_URL"] == url


def test_compose_matches_asterisk_conf(services):
    """asterisk-conf/ names the compose services, the database and the users."""
    realtime = conf_section(CONF / "res_pgsql.conf", "general")
    cdr = conf_section(CONF / "cdr_pgsql.conf", "global")
    postgres_env = environment(services["postgres"])
    assert realtime["dbhost"] in services
    assert cdr["hostname"] in services
    assert realtime["dbname"] == cdr["dbname"] == "callgate"
    assert realtime["dbuser"] == cdr["user"] == "asterisk"
    assert realtime["dbpass"] == postgres_env["DB_ASTERISK_PASSWORD"]
    assert cdr["password"] == postgres_env["DB_ASTERISK_PASSWORD"]

    globals_ = conf_section(CONF / "extensions.conf", "globals")
    assert globals_["CALLGATE_HOST"] in services
    env = environment(services["callgate"])
    assert (
        conf_section(CONF / "asterisk.conf", "options")["systemname"]
        == (env["CALLGATE_NODE"])
    )
    manager = conf_section(CONF / "manager.conf", "callgate")
    assert env["CALLGATE_AMI_URL"] == (
        f"ami://callgate:{manager['secret']}@asterisk:"
        f"{conf_section(CONF / 'manager.conf', 'general')['port']}"
    )


def test_compose_monitoring_files_exist(services):
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    prometheus = yaml.safe_load((CONTRIB / "prometheus.yml").read_text("utf-8"))
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["callgate:8080"]


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.parametrize("profile", [[], ["--profile", "monitoring"]])
def test_compose_config_valid(profile):
    if not docker_compose_available():
        pytest.skip(
            "the docker compose plugin is not installed (docker compose version failed)"
        )
    result = subprocess.run(
        ["docker", "compose", "--file", str(COMPOSE), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_runs_callgate():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "\nFROM python:3.11-slim\n" in text
    assert "\nUSER callgate\n" in text
    assert 'CMD ["callgate", "serve"]' in text
    assert 'CMD ["python", "/usr/local/bin/callgate-healthcheck"]' in text
    assert "pip install --editable ." in text


def test_dockerfile_copies_existing_files():
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("COPY "):
            continue
        for source in line.split()[1:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
            for pattern in patterns:
                excluded = fnmatch.fnmatch(source, pattern) or source.startswith(
                    pattern + "/"
                )
                assert not excluded, f".dockerignore {pattern} excludes {source}"


class MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/metrics" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"callgate_live_sessions 0\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_passes_on_metrics(metrics_server):
    result = run_healthcheck({"CALLGATE_API_LISTEN": f"0.0.0.0:{metrics_server}"})
    assert result.returncode == 0, result.stderr


def test_healthcheck_uses_metrics_listener(metrics_server):
    # A --no-api process serves /metrics on CALLGATE_METRICS_LISTEN only.
    closed = HTTPServer(("127.0.0.1", 0), MetricsHandler)
    closed_port = closed.server_address[1]
    closed.server_close()
    result = run_healthcheck(
        {
            "CALLGATE_API_LISTEN": f"127.0.0.1:{closed_port}",
            "CALLGATE_METRICS_LISTEN": f"127.0.0.1:{metrics_server}",
        }
    )
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_without_listener():
    closed = HTTPServer(("127.0.0.1", 0), MetricsHandler)
    closed_port = closed.server_address[1]
    closed.server_close()
    result = run_healthcheck({"CALLGATE_API_LISTEN": f"127.0.0.1:{closed_port}"})
    assert result.returncode == 1
    assert "health check failed" in result.stderr


def test_healthcheck_fails_on_bad_setting():
    result = run_healthcheck({"CALLGATE_API_LISTEN": "no-port"})
    assert result.returncode == 1
    assert "CALLGATE_API_LISTEN" in result.stderr


# --------------------------------------------------------- PostgreSQL scripts


PSQL = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"


@pytest.fixture(scope="module")
def init_server() -> Iterator[pgserver.PostgresServer]:
    """An embedded PostgreSQL of its own, because the init script creates roles."""
    data_dir = tempfile.mkdtemp(prefix="cgdeploy")
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def server_url(server: pgserver.PostgresServer, user: str, database: str) -> str:
    return server.get_postmaster_info().get_uri(user=user, database=database)


def psql(
    url: str, env: dict[str, str], script: Path | None = None, command: str = ""
) -> subprocess.CompletedProcess[str]:
    # The options of the postgres image's entrypoint for init files, plus -At
    # so that a query prints its bare value.
    args = [str(PSQL), "--no-psqlrc", "--no-password", "-At", f"--dbname={url}"]
    args += ["--file", str(script)] if script else ["--command", command]
    # Only the passwords given here reach the scripts.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    return subprocess.run(
        args,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("passwords", "missing"),
    [
        ({}, "DB_CALLGATE_PASSWORD"),
        ({"DB_CALLGATE_PASSWORD": "cg-secret"}, "DB_ASTERISK_PASSWORD"),
    ],
)
def test_init_sql_needs_passwords(init_server, passwords, missing):
    admin = server_url(init_server, "postgres", "postgres")
    result = psql(admin, passwords, INIT_SQL)
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr
    roles = psql(
        admin,
        {},
        command="SELECT count(*) FROM pg_roles "
        "WHERE rolname IN ('callgate', 'asterisk')",
    )
    assert roles.stdout.strip() == "0", "a failed init must create no role"


async def test_init_and_grants_for_asterisk(init_server):
    passwords = {"DB_CALLGATE_PASSWORD": "cg-secret", "DB_ASTERISK_PASSWORD": "a-s"}
    result = psql(server_url(init_server, "postgres", "postgres"), passwords, INIT_SQL)
    assert result.returncode == 0, result.stderr

    callgate_url = server_url(init_server, "callgate", "callgate")
    await db.migrate_url(callgate_url)
    result = psql(callgate_url, {}, GRANTS_SQL)
    assert result.returncode == 0, result.stderr
    # Every statement can run again, as after each later migration.
    result = psql(callgate_url, {}, GRANTS_SQL)
    assert result.returncode == 0, result.stderr

    connection = await asyncpg.connect(server_url(init_server, "asterisk", "callgate"))
    try:
        assert await connection.fetchval("SHOW timezone") == "UTC"
        for view in ("ps_endpoints", "ps_auths", "ps_aors", "ps_endpoint_id_ips"):
            await connection.fetch(f"SELECT * FROM {view} LIMIT 1")
        await connection.execute(
            "INSERT INTO ps_contacts (id, uri, reg_server) VALUES ($1, $2, $3)",
            "1000000001;@abc",
            "sip:1000000001@127.0.0.1:5062",
            "node1",
        )
        await connection.execute(
            "UPDATE ps_contacts SET expiration_time = 1 WHERE reg_server = 'node1'"
        )
        await connection.execute("DELETE FROM ps_contacts WHERE reg_server = 'node1'")
        await connection.execute(
            "INSERT INTO cdr (uniqueid, disposition) VALUES ('node1-1.0', 'ANSWERED')"
        )
        # Nothing else: not the accounts, not the SIP secrets behind the
        # views, not even the CDRs it wrote.
        for table in ("accounts", "sip_accounts", "cdr"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch(f"SELECT * FROM {table} LIMIT 1")
    finally:
        await connection.close()


# ----------------------------------------------------------- asterisklint

ASTERISKLINT = Path(sys.executable).parent / "asterisklint"

# W_WSH_VARSET flags spaces around "=" in `key = value` lines. Asterisk's
# config parser strips the spaces from both the name and the value, so
# `CALLGATE_HOST = callgate` in [globals] sets "callgate". The class covers
# only that separator, never the arguments of Set() in the dialplan.
ALINT_IGNORE = "W_WSH_VARSET"

# Runs asterisklint's generic config parser over one file; any message it
# prints to stderr is a finding.
CONFIG_CHECK = """
import sys
from asterisklint import FileConfigParser
parser = FileConfigParser()
parser.include(sys.argv[1])
for _ in parser:
    pass
"""


def test_asterisklint_dialplan():
    assert ASTERISKLINT.exists(), "asterisklint missing: install the dev dependencies"
    result = subprocess.run(
        [str(ASTERISKLINT), "dialplan-check", "extensions.conf"],
        env={**os.environ, "ALINT_IGNORE": ALINT_IGNORE},
        cwd=CONF,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == ""
    assert result.returncode == 0


@pytest.mark.parametrize("name", sorted(path.name for path in CONF.glob("*.conf")))
def test_asterisklint_config_syntax(name):
    result = subprocess.run(
        [sys.executable, "-c", CONFIG_CHECK, name],
        env={**os.environ, "ALINT_IGNORE": ALINT_IGNORE},
        cwd=CONF,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == ""
    assert result.returncode == 0


# ------------------------------------------------------------ Grafana dashboard

METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def declared_metrics() -> dict[str, tuple[str, set[str]]]:
    """Find every metric constructor in engine/, api/ and agi/.

    Returns {name: (class, label names)} from calls such as
    Counter("callgate_x_total", "help", ["label"]).
    """
    found: dict[str, tuple[str, set[str]]] = {}
    for folder in METRIC_SOURCES:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                kind = func.id if isinstance(func, ast.Name) else None
                if isinstance(func, ast.Attribute):
                    kind = func.attr
                first = node.args[0]
                if kind not in METRIC_CLASSES or not isinstance(first, ast.Constant):
                    continue
                labels_node = node.args[2] if len(node.args) > 2 else None
                for keyword in node.keywords:
                    if keyword.arg == "labelnames":
                        labels_node = keyword.value
                labels = set()
                if isinstance(labels_node, ast.List | ast.Tuple):
                    labels = {item.value for item in labels_node.elts}
                found[first.value] = (kind, labels)
    return found


def exposed_series() -> dict[str, tuple[str, set[str]]]:
    """Map each series name Prometheus scrapes to (metric class, labels)."""
    series: dict[str, tuple[str, set[str]]] = {}
    for name, (kind, labels) in declared_metrics().items():
        if kind == "Counter":
            total = name if name.endswith("_total") else name + "_total"
            series[total] = (kind, labels)
        elif kind in ("Histogram", "Summary"):
            series[name + "_sum"] = (kind, labels)
            series[name + "_count"] = (kind, labels)
            if kind == "Histogram":
                series[name + "_bucket"] = (kind, labels | {"le"})
        else:
            series[name] = (kind, labels)
    return series


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [panel for panel in panels if panel["type"] != "row"]


def test_dashboard_datasource_variable(dashboard):
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panel_ids_unique(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_metrics_exist(dashboard):
    series = exposed_series()
    assert series, "no metric constructors found in engine/, api/ or agi/"
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            names = re.findall(r"\bcallgate_[a-z0-9_]+", target["expr"])
            assert names, f"{panel['title']}: no callgate metric in the query"
            for name in names:
                assert name in series, f"{panel['title']}: unknown series {name}"


def test_dashboard_labels_exist(dashboard):
    series = exposed_series()
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            allowed = set(TARGET_LABELS)
            for name in re.findall(r"\bcallgate_[a-z0-9_]+", expr):
                allowed |= series[name][1]
            used = set()
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                used |= {label.strip() for label in group.split(",")}
            for matchers in re.findall(r"\{([^}]*)\}", expr):
                used |= set(re.findall(r"([a-z_]+)\s*[=!]~?", matchers))
            unknown = used - allowed
            assert not unknown, f"{panel['title']}: unknown labels {unknown}"


def test_dashboard_covers_core_metrics(dashboard):
    queried = set()
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bcallgate_[a-z0-9_]+", target["expr"]))
    required = {
        "callgate_agi_sessions_total",
        "callgate_authorize_duration_seconds_bucket",
        "callgate_live_sessions",
        "callgate_reserved_amount",
        "callgate_rejections_total",
        "callgate_cdrs_total",
        "callgate_ami_connected",
        "callgate_ami_reconnects_total",
        "callgate_ami_events_total",
        "callgate_debit_hangups_total",
        "callgate_outage_unfunded_amount_total",
        "callgate_api_requests_total",
        "callgate_api_request_duration_seconds_bucket",
        "callgate_db_query_duration_seconds_bucket",
    }
    assert required - queried == set()
