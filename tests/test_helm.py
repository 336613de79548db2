"""The Helm chart helm/embmon: lint, render, and check what it renders, offline.

Every case (the defaults and each helm/embmon/ci/*.yaml) is linted and rendered once per
module. Each rendered object is validated strictly against the Kubernetes 1.31 schemas
(kubernetes-validate), custom resources against their CRDs' openAPIV3Schema
(tests/k8s_crds/, closed wherever the schema lists the fields); every pod template is checked
against Pod Security "restricted"; the settings ConfigMaps are read by the agent's own loader;
values.schema.json's `config` is compared with agent.config.Settings. Nothing is installed:
there is no API server here, so admission (the Pod Security admission controller, the CRDs'
webhooks) is not exercised, only the schemas.

Needs .tools/bin/helm (`make tools`); without it the tests fail, they do not skip.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent.config import Settings, load_settings
from agent.fields import FieldMap

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "embmon"
HELM = ROOT / ".tools" / "bin" / "helm"
CRDS = ROOT / "tests" / "k8s_crds"
BAD = ROOT / "tests" / "helm_values"
K8S_VERSION = "1.31"

CI_FILES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
CASES = ["default", *CI_FILES]

# The one Settings key that is not a chart value (a plain password would sit in a ConfigMap
# and in Helm's release history); kafka.sasl.passwordSecret replaces it.
EXCLUDED_SETTINGS = {"sasl_plain_password"}
# Settings the chart sets itself (the schema lists them, the template refuses them).
CHART_SET_SETTINGS = {"role", "reference", "out"}

ROLE_OF_COMPONENT = {"agent": "all", "collector": "collector", "evaluator": "evaluator"}


# --- helm ---------------------------------------------------------------------------------


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"{HELM.relative_to(ROOT)} is missing: run make tools")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
    )


def values_args(case: str) -> list[str]:
    return [] if case == "default" else ["-f", str(CHART / "ci" / case)]


def render(*args: str) -> list[dict[str, Any]]:
    done = helm("template", "rel", str(CHART), "--namespace", "embmon", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {case: render(*values_args(case)) for case in CASES}


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    done = helm("lint", "--strict", str(CHART), *values_args(case))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_ci_files_present() -> None:
    expected = {"single", "scaled", "scaled-keda", "monitoring", "reference-url", "metrics-tls"}
    assert {Path(f).stem for f in CI_FILES} >= expected


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion != pyproject version"


def test_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {case: sorted({o["kind"] for o in objs}) for case, objs in rendered.items()}
    assert kinds["default"] == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert "PersistentVolumeClaim" in kinds["single.yaml"]
    assert "NetworkPolicy" in kinds["single.yaml"]
    assert "ScaledObject" in kinds["scaled-keda.yaml"]
    assert "ScaledObject" not in kinds["scaled.yaml"]
    assert "HorizontalPodAutoscaler" not in {k for ks in kinds.values() for k in ks}
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds["monitoring.yaml"])
    for case, objs in rendered.items():
        deployments = {component(d) for d in of_kind(objs, "Deployment")}
        layout = "scaled" if case.startswith("scaled") else "single"
        assert deployments == ({"collector", "evaluator"} if layout == "scaled" else {"agent"})


# --- strict schema validation -------------------------------------------------------------


def close_schema(node: Any) -> Any:
    """A copy of an OpenAPI v3 schema where every object that lists its properties and
    neither preserves unknown fields nor says what else it takes refuses unknown keys."""
    if isinstance(node, list):
        return [close_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: close_schema(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = close_schema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def test_crd_schemas_known(crd_validators: dict[tuple[str, str], Any]) -> None:
    assert {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject"),
    } <= set(crd_validators)


def test_closed_crd_schema_refuses_unknown_field(
    crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator],
) -> None:
    """The strictness is real: a typo in a ServiceMonitor endpoint is an error."""
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]},
    }
    validator = crd_validators[("monitoring.coreos.com/v1", "ServiceMonitor")]
    errors = list(validator.iter_errors(monitor))
    assert any("intervall" in e.message for e in errors)


def test_kubernetes_validation_is_strict(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A misspelt field in the chart's own Deployment is an error, not ignored."""
    (deployment,) = copy.deepcopy(of_kind(rendered["default"], "Deployment"))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_objects_validate_strictly(
    case: str,
    rendered: dict[str, list[dict[str, Any]]],
    crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator],
) -> None:
    for obj in rendered[case]:
        where = f"{case}: {obj['kind']}/{obj['metadata']['name']}"
        key = (obj["apiVersion"], obj["kind"])
        if key in crd_validators:
            errors = [
                f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd_validators[key].iter_errors(obj)
            ]
            assert not errors, f"{where}: {errors}"
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc}")


# --- Pod Security "restricted" ------------------------------------------------------------

# Pod Security Standards, "baseline" and "restricted" (kubernetes.io/docs/concepts/security/
# pod-security-standards/), the fields they list for a pod spec.
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_CAPABILITIES = {"NET_BIND_SERVICE"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
ALLOWED_APPARMOR = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks Pod Security "restricted" (baseline included); [] if none."""
    found = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(f"{host} is true")
    if pod.get("securityContext", {}).get("windowsOptions", {}).get("hostProcess"):
        found.append("windows hostProcess")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    pod_ctx = pod.get("securityContext", {})
    if pod_ctx.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in ALLOWED_APPARMOR:
        found.append(f"pod appArmorProfile {pod_ctx['appArmorProfile']['type']}")
    if pod_ctx.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    for sysctl in pod_ctx.get("sysctls", []):
        found.append(f"pod sysctl {sysctl.get('name')}")
    containers = [
        (kind, c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(kind, [])
    ]
    if not containers:
        found.append("no containers")
    for kind, container in containers:
        name = f"{kind}/{container['name']}"
        ctx = container.get("securityContext", {})

        def setting(key: str, ctx: dict[str, Any] = ctx) -> Any:
            return ctx.get(key, pod_ctx.get(key))

        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if setting("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if not set(caps.get("add", [])) <= ALLOWED_CAPABILITIES:
            found.append(f"{name}: adds capabilities {caps['add']}")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        if seccomp.get("type") not in ALLOWED_SECCOMP:
            found.append(f"{name}: seccompProfile is {seccomp.get('type')}")
        if ctx.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in ALLOWED_APPARMOR:
            found.append(f"{name}: appArmorProfile {ctx['appArmorProfile']['type']}")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {ctx['procMount']}")
        if setting("seLinuxOptions") and {
            "user",
            "role",
        } & set(setting("seLinuxOptions")):
            found.append(f"{name}: seLinuxOptions user/role")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found


def chart_hardening_violations(pod: dict[str, Any]) -> list[str]:
    """What this chart promises beyond the standard: read-only root, user 10001, no token."""
    found = []
    ctx = pod.get("securityContext", {})
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        if ctx.get(key) != 10001:
            found.append(f"pod {key} is {ctx.get(key)}")
    if pod.get("automountServiceAccountToken") is not False:
        found.append("automountServiceAccountToken is not false")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            found.append(f"{c['name']}: root filesystem writable")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if "/tmp" not in mounts:
            found.append(f"{c['name']}: no /tmp volume")
    return found


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"]


@pytest.mark.parametrize("case", CASES)
def test_pods_meet_restricted(case: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    pods = list(pod_specs(rendered[case]))
    assert pods
    for name, pod in pods:
        assert restricted_violations(pod) == [], f"{case}: {name}"
        assert chart_hardening_violations(pod) == [], f"{case}: {name}"


def test_reference_url_init_container_checked(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (deployment,) = of_kind(rendered["reference-url.yaml"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["embmon", "reference", "fetch"]
    assert init["args"] == [
        "--url",
        "https://artifacts.example.com/embmon/ref-2026-12-01.tar.gz",
        "--sha256",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "--out",
        "/var/lib/embmon-reference",
    ]
    (agent,) = pod["containers"]
    assert "command" not in agent, "the image's ENTRYPOINT runs embmon run"
    ref = {m["name"]: m for m in agent["volumeMounts"]}["reference"]
    assert ref["mountPath"] == "/var/lib/embmon-reference" and ref["readOnly"]
    assert {v["name"]: v for v in pod["volumes"]}["reference"].keys() == {"name", "emptyDir"}
    # Break the init container only: the checker must see it.
    broken = copy.deepcopy(pod)
    broken["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert restricted_violations(broken) == [
        "initContainers/reference-fetch: allowPrivilegeEscalation is not false"
    ]


def _break(pod: dict[str, Any], how: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    c = pod["containers"][0]
    if how == "hostNetwork":
        pod["hostNetwork"] = True
    elif how == "hostPID":
        pod["hostPID"] = True
    elif how == "hostIPC":
        pod["hostIPC"] = True
    elif how == "hostPath":
        pod["volumes"].append({"name": "h", "hostPath": {"path": "/var/run"}})
    elif how == "privileged":
        c["securityContext"]["privileged"] = True
    elif how == "escalation":
        del c["securityContext"]["allowPrivilegeEscalation"]
    elif how == "root":
        pod["securityContext"]["runAsNonRoot"] = False
        c["securityContext"].pop("runAsNonRoot")
    elif how == "caps-drop":
        c["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    elif how == "caps-add":
        c["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    elif how == "seccomp":
        c["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
        pod["securityContext"].pop("seccompProfile")
    elif how == "apparmor":
        c["securityContext"]["appArmorProfile"] = {"type": "Unconfined"}
    elif how == "procMount":
        c["securityContext"]["procMount"] = "Unmasked"
    elif how == "hostPort":
        c["ports"][0]["hostPort"] = 9808
    return pod


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("hostNetwork", "hostNetwork is true"),
        ("hostPID", "hostPID is true"),
        ("hostIPC", "hostIPC is true"),
        ("hostPath", "volume h: type ['hostPath'] not allowed"),
        ("privileged", "containers/embmon: privileged"),
        ("escalation", "containers/embmon: allowPrivilegeEscalation is not false"),
        ("root", "containers/embmon: runAsNonRoot is not true"),
        ("caps-drop", "containers/embmon: capabilities do not drop ALL"),
        ("caps-add", "containers/embmon: adds capabilities ['SYS_ADMIN']"),
        ("seccomp", "containers/embmon: seccompProfile is Unconfined"),
        ("hostPort", "containers/embmon: hostPort 9808"),
        ("apparmor", "containers/embmon: appArmorProfile Unconfined"),
        ("procMount", "containers/embmon: procMount Unmasked"),
    ],
)
def test_restricted_checker_catches(
    how: str, message: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The checker is not vacuous: each broken rule on the chart's own pod is reported."""
    (deployment,) = of_kind(rendered["default"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert restricted_violations(_break(pod, how)) == [message]


def test_net_bind_service_is_allowed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (deployment,) = of_kind(rendered["default"], "Deployment")
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []


# --- the Deployments, their settings and volumes ------------------------------------------


def settings_of(objs: list[dict[str, Any]], deployment: dict[str, Any], tmp_path: Path) -> Settings:
    """The agent's settings as its container will load them: the mounted file and its env."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["EMBMON_CONFIG"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = by_name(objs, "ConfigMap", volume["configMap"]["name"])
    path = tmp_path / f"{deployment['metadata']['name']}.yaml"
    path.write_text(configmap["data"][mount["subPath"]])
    assert container.get("args", []) == [], "the role is in the settings file, not in args"
    return load_settings(path, env=env, flags={})


@pytest.mark.parametrize("case", CASES)
def test_settings_load_with_the_agent_loader(
    case: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered[case]
    for deployment in of_kind(objs, "Deployment"):
        settings = settings_of(objs, deployment, tmp_path)
        assert settings.role == ROLE_OF_COMPONENT[component(deployment)]
        assert settings.out == "/var/lib/embmon"
        pod = deployment["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert settings.reference in mounts, "the reference path is mounted"
        assert settings.out in mounts
        assert mounts["/etc/embmon/embmon.yaml"]["readOnly"]
        port = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert port["metrics"] == settings.metrics_port == 9808
        if settings.role != "all":
            assert settings.profiles_topic == "embmon-profiles"


def test_single_kafka_secrets_wired(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered["single.yaml"]
    (deployment,) = of_kind(objs, "Deployment")
    settings = settings_of(objs, deployment, tmp_path)
    assert settings.sasl_plain_password is None
    assert settings.sasl_plain_password_file == "/etc/embmon/kafka/password"
    assert settings.ssl_cafile == "/etc/embmon/kafka/ca.crt"
    assert settings.ssl_certfile == "/etc/embmon/kafka/client.crt"
    assert settings.ssl_keyfile == "/etc/embmon/kafka/client.key"
    assert settings.security_protocol == "SASL_SSL"
    assert settings.fields == (("embedding", "payload.vector"), ("model", "svc"))
    assert settings.dead_letter_rate == 50.5
    pod = deployment["spec"]["template"]["spec"]
    kafka = {v["name"]: v for v in pod["volumes"]}["kafka"]["projected"]["sources"]
    assert kafka == [
        {
            "secret": {
                "name": "embmon-kafka",
                "items": [{"key": "password", "path": "password"}],
            }
        },
        {
            "secret": {
                "name": "embmon-kafka-tls",
                "items": [
                    {"key": "ca.crt", "path": "ca.crt"},
                    {"key": "tls.crt", "path": "client.crt"},
                    {"key": "tls.key", "path": "client.key"},
                ],
            }
        },
    ]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["kafka"] == {"name": "kafka", "mountPath": "/etc/embmon/kafka", "readOnly": True}
    for configmap in of_kind(objs, "ConfigMap"):
        assert "sasl_plain_password:" not in json.dumps(configmap)


@pytest.mark.parametrize("case", CASES)
def test_pods_probes_image(case: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in of_kind(rendered[case], "Deployment"):
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "command" not in c
        scheme = "HTTPS" if case == "metrics-tls.yaml" else "HTTP"
        assert c["livenessProbe"]["httpGet"] == {
            "path": "/healthz",
            "port": "metrics",
            "scheme": scheme,
        }
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["readinessProbe"]["periodSeconds"] == 10
        assert c["resources"]["requests"] and c["resources"]["limits"]
        tag = "0.1.0"
        assert c["image"].endswith(f":{tag}")
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/reference"])


def test_layout_replicas_and_volumes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def deployments(case: str) -> dict[str, dict[str, Any]]:
        return {component(d): d for d in of_kind(rendered[case], "Deployment")}

    def data_volume(d: dict[str, Any]) -> dict[str, Any]:
        vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        return dict(vols["data"])

    single = deployments("single.yaml")["agent"]
    assert single["spec"]["replicas"] == 1
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert data_volume(single)["persistentVolumeClaim"] == {"claimName": "rel-embmon-data"}
    assert of_kind(rendered["single.yaml"], "PersistentVolumeClaim")[0]["metadata"]["name"] == (
        "rel-embmon-data"
    )
    assert "emptyDir" in data_volume(deployments("default")["agent"])

    scaled = deployments("scaled.yaml")
    assert scaled["collector"]["spec"]["replicas"] == 3
    assert scaled["evaluator"]["spec"]["replicas"] == 1
    assert "emptyDir" in data_volume(scaled["collector"])
    assert "persistentVolumeClaim" in data_volume(scaled["evaluator"])

    keda = deployments("scaled-keda.yaml")
    assert "replicas" not in keda["collector"]["spec"], "KEDA owns the collectors' replicas"
    assert keda["evaluator"]["spec"]["replicas"] == 2


def test_scaled_object(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (scaled,) = of_kind(rendered["scaled-keda.yaml"], "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-embmon-collector",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 12)
    assert spec["triggers"] == [
        {
            "type": "kafka",
            "metadata": {
                "bootstrapServers": "kafka:9093",
                "consumerGroup": "embmon-prod",
                "topic": "inference-events",
                "lagThreshold": "50000",
                "allowIdleConsumers": "false",
            },
            "authenticationRef": {"name": "embmon-kafka-keda"},
        }
    ]
    # The collectors consume with the group KEDA measures.
    settings = yaml.safe_load(
        by_name(rendered["scaled-keda.yaml"], "ConfigMap", "rel-embmon-collector")["data"][
            "embmon.yaml"
        ]
    )
    assert settings["group_id"] == "embmon-prod"
    assert settings["topics"] == ["inference-events"]


@pytest.mark.parametrize("case", CASES)
def test_services_and_pdbs(case: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[case]
    services = {component(s): s for s in of_kind(objs, "Service")}
    pdbs = {component(p): p for p in of_kind(objs, "PodDisruptionBudget")}
    for deployment in of_kind(objs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = services[component(deployment)]
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": 9808, "targetPort": "metrics", "protocol": "TCP"}
        ]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["metadata"]["labels"]["embmon.io/scrape-job"] == "embmon"
        pdb = pdbs[component(deployment)]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    serving = {"agent"} if "agent" in services else {"evaluator"}
    assert serving <= set(services)
    (account,) = of_kind(objs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (policy,) = of_kind(rendered["single.yaml"], "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    },
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }
    ]
    kafka, dns = spec["egress"]
    assert kafka == {
        "ports": [{"port": 9093, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.99.0/24"]}}],
    }
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    (url_policy,) = of_kind(rendered["reference-url.yaml"], "NetworkPolicy")
    assert url_policy["spec"]["egress"][-1] == {"ports": [{"port": 443, "protocol": "TCP"}]}


def test_checksums_roll_the_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def annotations(objs: list[dict[str, Any]]) -> dict[str, str]:
        (deployment,) = of_kind(objs, "Deployment")
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    base = annotations(rendered["default"])
    new_ref = annotations(render("--set", "reference.configMap=embmon-ref-v2"))
    assert new_ref["checksum/reference"] != base["checksum/reference"]
    # The ConfigMap's name is in no setting (the mount path stays): the settings are the same.
    assert new_ref["checksum/config"] == base["checksum/config"]
    new_window = annotations(render("--set", "config.window=1d"))
    assert new_window["checksum/config"] != base["checksum/config"]
    assert new_window["checksum/reference"] == base["checksum/reference"]


# --- monitoring ---------------------------------------------------------------------------


def test_prometheus_rule_is_the_rule_file(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["monitoring.yaml"]
    (rule,) = of_kind(objs, "PrometheusRule")
    source = yaml.safe_load((ROOT / "deploy" / "prometheus" / "embmon-rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    assert rule["metadata"]["labels"]["release"] == "monitoring"


def test_prometheus_rule_recording_rules_only(
    crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator],
) -> None:
    """For alerting from Grafana: the same groups, their alerting rules left out."""
    (rule,) = of_kind(
        render(
            "-f",
            str(CHART / "ci" / "monitoring.yaml"),
            "--set",
            "prometheusRule.recordingRulesOnly=true",
        ),
        "PrometheusRule",
    )
    source = yaml.safe_load((ROOT / "deploy" / "prometheus" / "embmon-rules.yaml").read_text())
    expected = [
        {**group, "rules": [r for r in group["rules"] if "record" in r]}
        for group in source["groups"]
        if any("record" in r for r in group["rules"])
    ]
    assert expected and rule["spec"]["groups"] == expected
    assert all("alert" not in r for g in rule["spec"]["groups"] for r in g["rules"])
    validator = crd_validators[("monitoring.coreos.com/v1", "PrometheusRule")]
    assert [e.message for e in validator.iter_errors(rule)] == []


def test_service_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["monitoring.yaml"]
    (monitor,) = of_kind(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "monitoring"
    assert monitor["spec"]["jobLabel"] == "embmon.io/scrape-job"
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "15s",
            "scrapeTimeout": "10s",
        }
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["embmon"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in of_kind(objs, "Service"):
        assert selector.items() <= service["metadata"]["labels"].items()


def test_metrics_tls(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    objs = rendered["metrics-tls.yaml"]
    (deployment,) = of_kind(objs, "Deployment")
    settings = settings_of(objs, deployment, tmp_path)
    assert settings.metrics_web_config == "/etc/embmon/web/web-config.yml"
    pod = deployment["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["web"]["secret"]["secretName"] == "embmon-web"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["web"] == {"name": "web", "mountPath": "/etc/embmon/web", "readOnly": True}
    (monitor,) = of_kind(objs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "embmon-web-ca", "key": "ca.crt"}},
        "serverName": "rel-embmon-agent.embmon.svc",
        "insecureSkipVerify": False,
    }
    assert endpoint["basicAuth"] == {
        "username": {"name": "embmon-scrape", "key": "username"},
        "password": {"name": "embmon-scrape", "key": "password"},
    }


def test_grafana_configmaps_hold_the_generated_files(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["monitoring.yaml"]
    generated = ROOT / "deploy" / "grafana" / "generated"
    dashboards = [
        c for c in of_kind(objs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    held = {}
    for configmap in dashboards:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "embmon"}
        held.update(configmap["data"])
    assert set(held) == {"embmon-drift.json", "embmon-agent.json"}
    for name, text in held.items():
        assert text == (generated / name).read_text(), name
        json.loads(text)
    (alerts,) = [
        c for c in of_kind(objs, "ConfigMap") if "grafana_alert" in c["metadata"]["labels"]
    ]
    assert alerts["metadata"]["labels"]["grafana_alert"] == "1"
    assert alerts["data"] == {"embmon-alerts.yaml": (generated / "embmon-alerts.yaml").read_text()}


def test_chart_copies_are_byte_identical() -> None:
    """helm/embmon/files/ holds copies of deploy/ files (Helm reads only the chart)."""
    sys.path.insert(0, str(ROOT / "helm"))
    try:
        sync = __import__("sync-files")
    finally:
        sys.path.remove(str(ROOT / "helm"))
    assert set(sync.SOURCES) == {p.name for p in (CHART / "files").iterdir()}
    stale = sync.stale()
    assert not stale, f"{stale}: run python3 helm/sync-files.py"


# --- NOTES.txt ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose NOTES.txt `helm template` renders (it skips NOTES.txt, and
    `helm install --dry-run` needs a cluster): the notes become a named template, printed
    into a ConfigMap."""
    chart = tmp_path_factory.mktemp("notes") / "embmon"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  NOTES.txt: {{ include "test.notes" . | toJson }}\n'
    )
    return chart


@pytest.mark.parametrize("case", CASES)
def test_notes_render(case: str, notes_chart: Path) -> None:
    done = helm(
        "template",
        "rel",
        str(notes_chart),
        "--namespace",
        "embmon",
        "--show-only",
        "templates/zz-notes.yaml",
        *values_args(case),
    )
    assert done.returncode == 0, done.stderr
    notes = yaml.safe_load(done.stdout)["data"]["NOTES.txt"]
    layout = "scaled" if case.startswith("scaled") else "single"
    assert f"({layout} layout) is installed as rel-embmon in namespace embmon" in notes
    serving = "evaluator" if layout == "scaled" else "agent"
    assert f"port-forward svc/rel-embmon-{serving} 9808" in notes
    placeholder = "WARNING: still the chart's placeholder" in notes
    if case == "default":
        assert "image.repository (embmon), config.bootstrap_servers (kafka:9092), " in notes
        assert "reference.configMap (embmon-reference)" in notes
    if case == "single.yaml":
        assert not placeholder


# --- values.schema.json -------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def test_schema_is_draft07_and_takes_the_defaults(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for name in ["values.yaml", *(f"ci/{f}" for f in CI_FILES)]:
        values = yaml.safe_load((CHART / name).read_text())
        errors = [e.message for e in validator.iter_errors(values)]
        assert not errors, f"{name}: {errors}"


def test_schema_closed_everywhere(schema: dict[str, Any]) -> None:
    """Every object schema says what else it takes: false, or a typed map (labels)."""
    open_ones = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                extra = node.get("additionalProperties")
                if extra is None and path != "properties.global":
                    open_ones.append(path)
                if isinstance(extra, dict):
                    assert extra.get("type") == "string", path
            for key, sub in node.items():
                walk(sub, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "")
    assert open_ones == []
    assert schema["additionalProperties"] is False


def _expected_type(name: str) -> tuple[set[str], str | None]:
    """JSON schema type(s) of a Settings field, and of its items for a tuple."""
    hint = get_type_hints(Settings)[name]
    types_: set[str] = set()
    if get_origin(hint) in (Union, types.UnionType):
        types_.add("null")
        hint = next(a for a in get_args(hint) if a is not type(None))
    if name == "fields":  # NAME: PATH, a mapping in the file
        return types_ | {"object"}, None
    if get_origin(hint) is tuple:
        return types_ | {"array"}, "string"
    simple = {str: "string", int: "integer", bool: "boolean", float: "number"}
    return types_ | {simple[hint]}, None


def test_config_schema_is_the_settings(schema: dict[str, Any]) -> None:
    config = schema["properties"]["config"]
    properties = config["properties"]
    settings = {f.name for f in dataclasses.fields(Settings)}
    assert settings >= EXCLUDED_SETTINGS, "the excluded setting no longer exists: update the chart"
    assert set(properties) == settings - EXCLUDED_SETTINGS
    assert config["additionalProperties"] is False
    assert config.get("required", []) == []
    for name, prop in properties.items():
        want, items = _expected_type(name)
        got = prop["type"]
        assert set(got if isinstance(got, list) else [got]) == want, name
        if items:
            assert prop["items"]["type"] == items, name
    fields = properties["fields"]
    assert set(fields["properties"]) == {f.name for f in dataclasses.fields(FieldMap)}
    assert set(properties) >= CHART_SET_SETTINGS


def test_config_schema_enums_are_accepted_by_the_agent(
    schema: dict[str, Any], tmp_path: Path
) -> None:
    """Each value an enum of the schema allows loads (the schema is no stricter by mistake)."""
    properties = schema["properties"]["config"]["properties"]
    for name in ("security_protocol", "time_mode", "log_level", "role", "sasl_mechanism"):
        for value in properties[name]["enum"]:
            path = tmp_path / "s.yaml"
            extra = "\nprofiles_topic: p" if value in ("collector", "evaluator") else ""
            path.write_text(yaml.safe_dump({name: value}) + extra)
            assert getattr(load_settings(path, env={}), name) == value


def test_values_defaults_are_valid_settings(tmp_path: Path) -> None:
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    load_settings(path, env={})


# --- rejected values ----------------------------------------------------------------------

BAD_MESSAGES = {
    "bad-wrong-type.yaml": "collectors.replicas: Invalid type. Expected: integer, given: string",
    "bad-unknown-top-key.yaml": "Additional property replicaCount is not allowed",
    "bad-unknown-nested-key.yaml": "serviceMonitor: Additional property intervall is not allowed",
    "bad-unknown-config-key.yaml": "config: Additional property windows is not allowed",
    "bad-plain-password.yaml": "config: Additional property sasl_plain_password is not allowed",
    "bad-max-replicas.yaml": "collectors.autoscaling.maxReplicas (8) exceeds "
    "collectors.autoscaling.partitions (6)",
    "bad-both-references.yaml": "set exactly one of reference.configMap and reference.url, not both",
    "bad-no-reference.yaml": "set exactly one of reference.configMap",
    "bad-scaled-no-profiles-topic.yaml": "layout scaled needs config.profiles_topic",
    "bad-role-in-config.yaml": "config.role is set by the chart",
    "bad-until-end.yaml": "config.until_end: true makes embmon exit",
}


def test_every_bad_file_has_its_message() -> None:
    assert {p.name for p in BAD.glob("bad-*.yaml")} == set(BAD_MESSAGES)


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_bad_values_rejected(name: str) -> None:
    done = helm("template", "rel", str(CHART), "-f", str(BAD / name))
    assert done.returncode != 0, f"{name} rendered"
    assert BAD_MESSAGES[name] in done.stderr, done.stderr


def test_plain_password_refused_without_the_schema() -> None:
    """Even with --skip-schema-validation, a plain password does not reach a ConfigMap."""
    done = helm(
        "template",
        "rel",
        str(CHART),
        "--skip-schema-validation",
        "-f",
        str(BAD / "bad-plain-password.yaml"),
    )
    assert done.returncode != 0
    assert "config.sasl_plain_password: a plain password is never put in the ConfigMap" in (
        done.stderr
    )
    assert "hunter2" not in done.stderr + done.stdout


# --- README -------------------------------------------------------------------------------


def key_paths(values: Any, schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key path of values.yaml down to its leaves (a free-form map is a leaf)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            yield from key_paths(value, sub, path + ".")


def test_readme_lists_every_value(schema: dict[str, Any]) -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    paths = set(key_paths(values, schema))
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    missing = sorted(leaves - listed)
    assert not missing, f"README.md does not list {missing}"
    config_keys = {f"config.{k}" for k in schema["properties"]["config"]["properties"]}
    assert not sorted(config_keys - listed), "README.md: a config key is missing"
    unknown = sorted(p for p in listed - leaves - config_keys if "." in p or p in values)
    assert not unknown, f"README.md lists values that do not exist: {unknown}"
    assert "sasl_plain_password" in readme
