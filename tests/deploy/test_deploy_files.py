"""CI checks of the deployment files, as far as this machine allows (no Docker, no Kubernetes, no Apache Kafka):
every YAML parses, every SMARTFLOW_* variable set is a real setting and loads, the compose stack and the manifests
have the parts docs/deploy.md promises, the Dockerfile passes hadolint and its entry points exist, and promtool
accepts the Prometheus config and alert rules."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

import config
from deploy_files import (
    ALERTS, COMPOSE, DASHBOARDS, DEPLOY, DOCKERFILE, K8S, PROMETHEUS, ROOT, compose, compose_envs, k8s_container_env,
    k8s_object, k8s_objects, load_all, referenced_metrics, setting_path_error, yaml_files,
)
from smartflow_streams.cli.embedded import TANSU_FAUST_SETTINGS, TANSU_FETCH_MAX_WAIT_MS


def _load_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> config.Settings:
    for key in [k for k in os.environ if k.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(config.ENV_PREFIX):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT / "deploy")  # no .env file there
    return config.load_settings()


def test_every_yaml_file_parses():
    files = yaml_files()
    assert COMPOSE in files and ALERTS in files and len(files) >= 10
    for path in files:
        assert load_all(path), f"{path} is empty"
    for path in DASHBOARDS:
        json.loads(path.read_text())


def test_setting_name_check_rejects_what_config_would_ignore():
    assert setting_path_error("SMARTFLOW_RELAY__BATCH_SIZE") is None
    assert setting_path_error("SMARTFLOW_KAFKA__SASL_PASSWORD") is None
    assert setting_path_error("SMARTFLOW_SERVICES__ACTIVE_SCHEDULER__TOPIC") is None
    assert setting_path_error("SMARTFLOW_FAUST__BROKER_SESSION_TIMEOUT") is None
    for bad in ("SMARTFLOW_RELAY__BATCHSIZE", "SMARTFLOW_KAFKA__PASSWORD", "SMARTFLOW_FAUST__NO_SUCH",
                "SMARTFLOW_SERVICES__NOPE__TOPIC", "SMARTFLOW_DATABASE", "SMARTFLOW_WORKER__WEB_PORT__X"):
        assert setting_path_error(bad) is not None, bad


def test_compose_variables_are_real_settings_and_load(monkeypatch):
    envs = compose_envs()
    checked = 0
    for service, env in envs.items():
        for key in env:
            if key.startswith("SMARTFLOW"):
                assert setting_path_error(key) is None, f"{service}: {key}: {setting_path_error(key)}"
                checked += 1
        if any(k.startswith(config.ENV_PREFIX) for k in env):
            settings = _load_env(env, monkeypatch)
            for key, value in env.items():  # a value that loads but is not what was meant would show here
                if key == "SMARTFLOW_RELAY__ENABLE_IDEMPOTENCE":
                    assert settings.relay.enable_idempotence is (value == "true")
            assert settings.database_url.startswith("mysql+aiomysql://") and settings.kafka_bootstrap == "kafka:9092"
    assert checked > 40
    worker = _load_env(envs["worker"], monkeypatch)
    assert worker.worker.services == ["active-scheduler", "notification"]
    assert _load_env(envs["worker-notification"], monkeypatch).worker.services == ["notification"]


def test_compose_uses_kafka_defaults_for_faust_not_the_tansu_ones():
    for service, env in compose_envs().items():
        for key in TANSU_FAUST_SETTINGS:
            name = f"SMARTFLOW_FAUST__{key.upper()}"
            assert name not in env or key == "consumer_auto_offset_reset", f"{service} sets Tansu's {name}"
        assert env.get("SMARTFLOW_WORKER__FETCH_MAX_WAIT_MS") != str(TANSU_FETCH_MAX_WAIT_MS)


def test_compose_stack_has_every_part():
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in services
    assert re.match(r"mysql:8(\.|$)", services["mysql"]["image"])
    assert services["schema"]["command"] == ["smartflow", "schema"]
    assert services["relay"]["command"] == ["smartflow-relay"] and services["relay"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("relay", "worker", "worker-scheduler", "worker-notification"):
        assert services[name]["depends_on"]["schema"]["condition"] == "service_completed_successfully"
    assert compose_envs()["worker-scheduler"]["SMARTFLOW_WORKER__SERVICES"] == '["active-scheduler"]'
    for name in ("prometheus", "grafana", "feishu-sink"):
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_worker_replicas_fit_the_partitions(monkeypatch):
    envs = compose_envs()
    for name in ("worker", "worker-scheduler", "worker-notification"):
        settings = _load_env(envs[name], monkeypatch)
        assert compose()["services"][name]["deploy"]["replicas"] <= settings.worker.topic_partitions


def test_kubernetes_manifests_have_every_part(monkeypatch):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in k8s_objects()}
    assert {("Deployment", "smartflow-relay"), ("Deployment", "smartflow-worker"), ("Job", "smartflow-schema"),
            ("Service", "smartflow-relay"), ("Service", "smartflow-worker"), ("Secret", "smartflow-secrets"),
            ("PodDisruptionBudget", "smartflow-relay"), ("PodDisruptionBudget", "smartflow-worker"),
            ("ConfigMap", "smartflow-config")} <= kinds
    secret = k8s_object("Secret", "smartflow-secrets")["stringData"]
    assert {"SMARTFLOW_DATABASE_URL", "SMARTFLOW_ADMIN_TOKEN", "SMARTFLOW_KAFKA__SASL_PASSWORD"} <= set(secret)
    assert not {k for k in k8s_object("ConfigMap", "smartflow-config")["data"] if "PASSWORD" in k or "TOKEN" in k}
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    assert all((K8S / r).exists() for r in kustomization["resources"])

    worker = k8s_object("Deployment", "smartflow-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["faust", "-A", "smartflow_streams", "worker"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    settings = _load_env(k8s_container_env(worker), monkeypatch)
    assert worker["spec"]["replicas"] <= settings.worker.topic_partitions
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.sasl_password is not None
    assert str(settings.worker.web_port) == str(container["ports"][0]["containerPort"])

    relay = k8s_object("Deployment", "smartflow-relay")
    rc = relay["spec"]["template"]["spec"]["containers"][0]
    assert rc["command"] == ["smartflow-relay"] and rc["readinessProbe"]["httpGet"]["path"] == "/health"
    relay_settings = _load_env(k8s_container_env(relay), monkeypatch)
    assert relay_settings.relay.metrics_port == rc["ports"][0]["containerPort"]
    assert relay_settings.relay.metrics_host == "0.0.0.0"
    job = k8s_object("Job", "smartflow-schema")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["smartflow", "schema"]
    _load_env(k8s_container_env(job), monkeypatch)


def test_kubernetes_variables_are_real_settings():
    names: set[str] = set()
    for obj in k8s_objects():
        if obj["kind"] == "ConfigMap":
            names |= set(obj["data"])
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == "smartflow-secrets":
            names |= set(obj["stringData"])
        template = obj.get("spec", {}).get("template")
        if template:
            for c in template["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    assert len(names) > 20
    for name in names:
        assert setting_path_error(name) is None, f"{name}: {setting_path_error(name)}"


def _dockerfile_stages() -> list[list[str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_structure_and_entry_points():
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        assert stage[0].split()[1] == "python:3.11-slim"
    final = stages[-1]
    final_text = "\n".join(final)
    assert not re.search(r"build-essential|gcc|g\+\+|\bmake\b|pip install", final_text), "build tools in final stage"
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root")), "final stage must run as a non-root user"
    health = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert health and "/health" in health[0] and "SMARTFLOW_WORKER__WEB_PORT" in health[0]
    assert any(line.startswith("COPY --from=") for line in final)
    cmd = json.loads([line for line in final if line.startswith("CMD ")][-1][4:])
    assert cmd[:4] == ["faust", "-A", "smartflow_streams", "worker"]
    for line in final:
        if line.startswith("ENV "):
            for key in re.findall(r"\b(SMARTFLOW_\w+)=", line):
                assert setting_path_error(key) is None, key
    for stage in stages:  # every COPY source from the build context exists
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), source
    # entry points: the console scripts and the Faust app the image runs exist and import
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"smartflow", "smartflow-relay"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    out = subprocess.run([sys.executable, "-m", "faust", "-A", "smartflow_streams", "--help"], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SMARTFLOW_DATABASE_URL": "sqlite+aiosqlite:///:memory:"})
    assert out.returncode == 0 and "worker" in out.stdout, out.stderr[-2000:]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_requirements_lock_pins_every_pyproject_dependency():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", dep).groups()
        assert lock.get(re.sub(r"[-_.]+", "-", name).lower()) == version, dep
    assert all("==" in line for line in (ROOT / "requirements.lock").read_text().splitlines()
               if line and not line.startswith("#"))


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: install the Debian package `prometheus` (bash scripts/setup.sh --system)"
    return path


def test_promtool_accepts_the_alert_rules():
    out = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", out.stdout + out.stderr)


def test_promtool_accepts_the_scrape_config(tmp_path):
    # the config names the rules at their container path; check a copy pointing at the repo's file
    text = PROMETHEUS.read_text().replace("/etc/prometheus/alerts.yml", str(ALERTS))
    (tmp_path / "prometheus.yml").write_text(text)
    out = subprocess.run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_and_rules_cover_every_required_view():
    metrics = referenced_metrics()
    for required in ("smartflow_outbox_rows", "smartflow_outbox_oldest_pending_seconds",
                     "smartflow_relay_published_total", "smartflow_relay_retried_total", "smartflow_consumer_lag",
                     "smartflow_outbox_consumed_total", "smartflow_notifications_total",
                     "smartflow_notification_provider_seconds_bucket"):
        assert required in metrics, required
    datasource_uid = load_all(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")[0][
        "datasources"][0]["uid"]
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == datasource_uid and panel["targets"]
