"""Readers for the deployment files (compose.yaml, deploy/**) shared by the deploy tests: YAML documents, the
SMARTFLOW_* variables they set, and the metric names the dashboard and the alert rules query."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import yaml
from pydantic import BaseModel

import config
from smartflow_streams.catalog import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"

PROMETHEUS_BUILTIN = {"up"}
"""Series Prometheus makes itself (not exported by our processes)."""


def yaml_files() -> list[pathlib.Path]:
    return [COMPOSE, *sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))]


def load_all(path: pathlib.Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_envs() -> dict[str, dict[str, str]]:
    """Service name -> its environment (anchors and merge keys resolved), values as strings."""
    out: dict[str, dict[str, str]] = {}
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out[name] = {str(k): str(v) for k, v in env.items()}
    return out


def k8s_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objs.extend(load_all(path))
    return objs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for obj in k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in {K8S}")


def k8s_container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What a pod of ``deployment`` (or Job) sees: its ConfigMap and Secret refs, then its own ``env``."""
    env: dict[str, str] = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(k8s_object("ConfigMap", ref["configMapRef"]["name"])["data"])
        if "secretRef" in ref:
            env.update(k8s_object("Secret", ref["secretRef"]["name"])["stringData"])
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"])
    return env


def setting_path_error(name: str) -> str | None:
    """``None`` when ``name`` (``SMARTFLOW_A__B``) is a setting of config.py, else why not.

    Walks the pydantic models the way pydantic-settings maps nested names: a model field descends, ``services``
    takes a catalog service (``_`` for ``-``) and a :class:`config.ServiceOverride` field, ``faust`` takes a
    Faust setting name, ``api_tokens`` is a whole JSON map."""
    if not name.startswith(config.ENV_PREFIX):
        return "not SMARTFLOW_"
    parts = name[len(config.ENV_PREFIX):].lower().split("__")
    model: type[BaseModel] = config.Settings
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part)
        if field is None:
            return f"{part!r} is not a field of {model.__name__}"
        if part == "faust" and model is config.Settings:
            if len(parts) != 1 or parts[0] not in config._faust_setting_names():
                return f"{'__'.join(parts)!r} is not a Faust setting"
            return None
        if part == "services" and model is config.Settings:
            if len(parts) != 2 or parts[0].replace("_", "-") not in registry.services():
                return f"services: expected SERVICE__FIELD with a catalog service, got {parts}"
            if parts[1] not in config.ServiceOverride.model_fields:
                return f"{parts[1]!r} is not a per-service override"
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not parts:
                return None  # the whole block as JSON
            model = annotation
            continue
        return None if not parts else f"{part!r} has no sub-settings"
    return "empty name"


def promql_expressions() -> list[str]:
    exprs: list[str] = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        exprs.extend(rule["expr"] for rule in group["rules"])
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
    return exprs


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def referenced_metrics() -> set[str]:
    """Every series name the dashboard and the alert rules select (``_bucket`` kept: it is a sample name)."""
    names: set[str] = set()
    for expr in promql_expressions():
        stripped = re.sub(r"\{[^}]*\}", "", expr)    # label matchers and values
        stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors ($__rate_interval)
        stripped = _GROUPING.sub("", stripped)         # label names of by (...) / on (...)
        for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
            token = match.group(0)
            if stripped[match.end():].lstrip().startswith("(") or token in _KEYWORDS:
                continue  # a function
            names.add(token)
    return names
