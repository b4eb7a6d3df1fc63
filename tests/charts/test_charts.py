"""Render the Helm charts offline (helm-python-sdk, the Helm v4 engine), lint them, validate every
object against the Kubernetes OpenAPI schemas of a pinned version and check what matters: pod
security, gRPC probes, the env contract, component switches and the values schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VPP_CHART = ROOT / "charts" / "vpp"
EDGE_CHART = ROOT / "charts" / "edge-agent"
KUBE_VERSION = "1.30.0"
NAMESPACE = "vpp"
RELEASE = "vpp"
COMPONENTS = ("gateway", "aggregation", "dispatch", "bidding", "forecasting", "market")
GRPC_PORT = 50051
METRICS_PORT = 9102
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The shared ConfigMap: one value of each for every component.
SHARED_CONFIG = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "VPP_KAFKA_SESSION_TIMEOUT_MS",
    "VPP_KAFKA_GROUP_PREFIX",
    "VPP_KAFKA_PRODUCE_TIMEOUT_S",
    "VPP_SITE_PARTITIONS",
    "VPP_SHUTDOWN_DRAIN_S",
    "VPP_GRPC_GRACE_S",
    "VPP_LOG_LEVEL",
}
# What a service does when it stops, at worst, besides the drain and the gRPC grace (app.py: consumers
# stop within 10 s; kafka.py: the producer settles and closes within 5 s each).
STOP_OVERHEAD_S = 20

Doc = dict[str, Any]

# (chart dir, values file relative to the chart, or None for the chart defaults)
CASES: list[tuple[Path, str | None]] = [
    (VPP_CHART, None),
    (VPP_CHART, "ci/demo-values.yaml"),
    (VPP_CHART, "ci/ha-values.yaml"),
    (EDGE_CHART, "ci/site-values.yaml"),
    (EDGE_CHART, "ci/hardware-values.yaml"),
]
CASE_IDS = [f"{chart.name}:{values or 'values.yaml'}" for chart, values in CASES]


def load_values(chart_dir: Path, values_file: str | None) -> dict[str, Any] | None:
    if values_file is None:
        return None
    loaded: dict[str, Any] = yaml.safe_load((chart_dir / values_file).read_text())
    return loaded


@pytest.fixture(scope="module")
def charts() -> Iterator[dict[Path, helm.Chart]]:
    loaded = {VPP_CHART: helm.Chart.load(VPP_CHART), EDGE_CHART: helm.Chart.load(EDGE_CHART)}
    yield loaded
    for chart in loaded.values():
        chart.close()


def render(chart: helm.Chart, values: dict[str, Any] | None) -> list[Doc]:
    manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Doc] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def component_of(doc: Doc) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


@pytest.fixture(scope="module")
def rendered(charts: dict[Path, helm.Chart]) -> dict[str, list[Doc]]:
    return {
        case_id: render(charts[chart_dir], load_values(chart_dir, values_file))
        for case_id, (chart_dir, values_file) in zip(CASE_IDS, CASES, strict=True)
    }


# --- every chart and values file ------------------------------------------------------------------


@pytest.mark.parametrize(("chart_dir", "values_file"), CASES, ids=CASE_IDS)
def test_lint_is_clean(chart_dir: Path, values_file: str | None) -> None:
    report = helm.lint(chart_dir, load_values(chart_dir, values_file), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # severity 1 is informational ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_every_object_is_valid_kubernetes(rendered: dict[str, list[Doc]], case_id: str) -> None:
    docs = rendered[case_id]
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vpp"


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_pods_are_locked_down(rendered: dict[str, list[Doc]], case_id: str) -> None:
    deployments = of_kind(rendered[case_id], "Deployment")
    assert deployments
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork")
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, container["name"]
            assert sc["runAsUser"] > 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert "memory" in container["resources"]["limits"]
            # The root filesystem is read-only: /tmp is the one writable place.
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}


def test_alert_rules_ship_in_the_chart_only_when_enabled(rendered: dict[str, list[Doc]]) -> None:
    assert not of_kind(rendered["vpp:values.yaml"], "PrometheusRule")
    (rule,) = of_kind(rendered["vpp:ci/ha-values.yaml"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    shipped = yaml.safe_load((VPP_CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == shipped  # the same rules promtool tests in tests/alerts


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("vpp:")])
def test_service_objects_are_checked_by_hand(rendered: dict[str, list[Doc]], case_id: str) -> None:
    for monitor in of_kind(rendered[case_id], "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
        ]
        assert monitor["spec"]["selector"]["matchLabels"]["vpp.io/metrics"] == "true"


# --- vpp chart ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("vpp:")])
def test_services_have_grpc_probes_and_the_env_contract(rendered: dict[str, list[Doc]], case_id: str) -> None:
    docs = rendered[case_id]
    configmaps = of_kind(docs, "ConfigMap")
    assert [cm["metadata"]["name"] for cm in configmaps] == [f"{RELEASE}-config"]
    assert set(configmaps[0]["data"]) == SHARED_CONFIG
    for dep in of_kind(docs, "Deployment"):
        component = component_of(dep)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", component]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": GRPC_PORT}, (component, probe)
        assert by_name(container["ports"])["grpc"]["containerPort"] == GRPC_PORT
        assert by_name(container["ports"])["metrics"]["containerPort"] == METRICS_PORT
        env = by_name(container["env"])
        assert env["VPP_GRPC_PORT"]["value"] == str(GRPC_PORT)
        assert env["VPP_METRICS_PORT"]["value"] == str(METRICS_PORT)
        assert env["VPP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Peers reach the pod at its IP; $(POD_IP) only expands when POD_IP is defined before it.
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["VPP_ADVERTISED_GRPC_TARGET"]["value"] == f"$(POD_IP):{GRPC_PORT}"
        names = [e["name"] for e in container["env"]]
        assert names.index("POD_IP") < names.index("VPP_ADVERTISED_GRPC_TARGET")
        assert len(names) == len(set(names)), names
        assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-config"}}]
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
        assert len(annotations["checksum/config"]) == 64
        if component == "gateway":
            assert env["VPP_GATEWAY_SITE_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {
                "name": "vpp-gateway-site-token",
                "key": "site-token",
            }
        else:
            assert "VPP_GATEWAY_SITE_TOKEN_SECRET" not in env


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("vpp:")])
def test_nothing_but_the_pod_name_names_a_replica(rendered: dict[str, list[Doc]], case_id: str) -> None:
    """Group ids are role names from the shared config; the pod's name only becomes VPP_INSTANCE_ID
    and its IP only the advertised gRPC target. Nothing else is taken from the pod."""
    docs = rendered[case_id]
    (configmap,) = of_kind(docs, "ConfigMap")
    for dep in of_kind(docs, "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        from_pod = {
            e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
            for e in container["env"]
            if "fieldRef" in e.get("valueFrom", {})
        }
        assert from_pod == {"VPP_INSTANCE_ID": "metadata.name", "POD_IP": "status.podIP"}, component_of(dep)
        for e in container["env"]:
            # No group id, prefix or partition count per component or per pod: only the ConfigMap's.
            assert "GROUP" not in e["name"], (component_of(dep), e)
            assert e["name"] not in SHARED_CONFIG - {"VPP_LOG_LEVEL"}, (component_of(dep), e)
            assert "$(POD_IP)" not in e.get("value", "") or e["name"] == "VPP_ADVERTISED_GRPC_TARGET"
    assert "$(" not in configmap["data"]["VPP_KAFKA_GROUP_PREFIX"]


def test_shared_config_defaults_and_overrides(rendered: dict[str, list[Doc]]) -> None:
    def data(case_id: str) -> dict[str, str]:
        (configmap,) = of_kind(rendered[case_id], "ConfigMap")
        return dict(configmap["data"])

    assert data("vpp:values.yaml") == {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-bootstrap.kafka.svc.cluster.local:9092",
        "VPP_KAFKA_SESSION_TIMEOUT_MS": "10000",
        "VPP_KAFKA_GROUP_PREFIX": "",
        "VPP_KAFKA_PRODUCE_TIMEOUT_S": "60",
        "VPP_SITE_PARTITIONS": "48",
        "VPP_SHUTDOWN_DRAIN_S": "1",
        "VPP_GRPC_GRACE_S": "3",
        "VPP_LOG_LEVEL": "INFO",
    }
    assert data("vpp:ci/demo-values.yaml")["VPP_SITE_PARTITIONS"] == "4"
    assert data("vpp:ci/demo-values.yaml")["VPP_SHUTDOWN_DRAIN_S"] == "0.5"
    assert data("vpp:ci/ha-values.yaml")["VPP_KAFKA_GROUP_PREFIX"] == "vpp-prod."
    assert data("vpp:ci/ha-values.yaml")["VPP_SITE_PARTITIONS"] == "48"


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("vpp:")])
def test_grace_period_outlasts_a_clean_stop(rendered: dict[str, list[Doc]], case_id: str) -> None:
    docs = rendered[case_id]
    (configmap,) = of_kind(docs, "ConfigMap")
    stop_s = float(configmap["data"]["VPP_SHUTDOWN_DRAIN_S"]) + float(configmap["data"]["VPP_GRPC_GRACE_S"])
    for dep in of_kind(docs, "Deployment"):
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= stop_s + STOP_OVERHEAD_S


def test_too_short_grace_period_is_refused(charts: dict[Path, helm.Chart]) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"terminationGracePeriodSeconds 40 is shorter"):
        render(charts[VPP_CHART], {"config": {"shutdownDrainS": 30}})
    with pytest.raises(helm.HelmRenderError, match=r"components\.dispatch: terminationGracePeriodSeconds 10"):
        render(charts[VPP_CHART], {"components": {"dispatch": {"enabled": True, "terminationGracePeriodSeconds": 10}}})


def test_ipv6_pods_advertise_a_bracketed_target(charts: dict[Path, helm.Chart]) -> None:
    docs = render(charts[VPP_CHART], {"podIPFamily": "IPv6"})
    for dep in of_kind(docs, "Deployment"):
        env = by_name(dep["spec"]["template"]["spec"]["containers"][0]["env"])
        assert env["VPP_ADVERTISED_GRPC_TARGET"]["value"] == f"[$(POD_IP)]:{GRPC_PORT}"


def test_production_defaults(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["vpp:values.yaml"]
    deployments = {component_of(d): d for d in of_kind(docs, "Deployment")}
    assert set(deployments) == set(COMPONENTS) - {"market"}
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "market"]
    (configmap,) = of_kind(docs, "ConfigMap")
    assert configmap["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap.kafka.svc.cluster.local:9092"
    assert not of_kind(docs, "NetworkPolicy")
    assert not of_kind(docs, "ServiceMonitor")
    # Gateway, aggregation and dispatch scale out (streams; site partitions), each with a PDB.
    replicas = {name: dep["spec"]["replicas"] for name, dep in deployments.items()}
    assert replicas == {"gateway": 2, "aggregation": 2, "dispatch": 2, "bidding": 1, "forecasting": 1}
    assert {component_of(p) for p in of_kind(docs, "PodDisruptionBudget")} == {"gateway", "aggregation", "dispatch"}

    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    gateway = services[f"{RELEASE}-gateway"]
    # Exposed outside the cluster with the gRPC port only; metrics get a ClusterIP Service.
    assert gateway["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in gateway["spec"]["ports"]] == [GRPC_PORT]
    assert "vpp.io/metrics" not in gateway["metadata"]["labels"]
    metrics = services[f"{RELEASE}-gateway-metrics"]
    assert metrics["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in metrics["spec"]["ports"]] == [METRICS_PORT]
    for name, svc in services.items():
        if name not in (f"{RELEASE}-gateway", f"{RELEASE}-gateway-metrics"):
            assert svc["spec"]["type"] == "ClusterIP"
            assert {p["port"] for p in svc["spec"]["ports"]} == {GRPC_PORT, METRICS_PORT}


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("vpp:")])
def test_pdb_exactly_for_replicated_components(rendered: dict[str, list[Doc]], case_id: str) -> None:
    docs = rendered[case_id]
    replicated = {component_of(d) for d in of_kind(docs, "Deployment") if d["spec"]["replicas"] > 1}
    assert {component_of(p) for p in of_kind(docs, "PodDisruptionBudget")} == replicated


def test_demo_runs_everything_small(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["vpp:ci/demo-values.yaml"]
    deployments = {component_of(d): d for d in of_kind(docs, "Deployment")}
    assert set(deployments) == set(COMPONENTS)
    assert all(d["spec"]["replicas"] == 1 for d in deployments.values())
    assert not of_kind(docs, "PodDisruptionBudget")
    gateway_svc = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"] == f"{RELEASE}-gateway")
    assert gateway_svc["spec"]["type"] == "ClusterIP"


def test_ha_gateway_network_policies_and_monitors(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["vpp:ci/ha-values.yaml"]
    deployments = {component_of(d): d for d in of_kind(docs, "Deployment")}
    assert deployments["gateway"]["spec"]["replicas"] == 3
    enabled = set(deployments)
    assert {component_of(p) for p in of_kind(docs, "NetworkPolicy")} == enabled
    assert {component_of(m) for m in of_kind(docs, "ServiceMonitor")} == enabled
    for monitor in of_kind(docs, "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    policies = {component_of(p): p for p in of_kind(docs, "NetworkPolicy")}
    grpc_rule, metrics_rule = policies["aggregation"]["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    # Aggregation replicas call each other (a site query goes to the owner of its partition) and bidding
    # reads site state; the market simulator, its other in-platform caller, is disabled, so it is not let in.
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": selector("aggregation")}},
        {"podSelector": {"matchLabels": selector("bidding")}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vpp-ops"}}},
    ]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # Edge agents reach the gateway from outside: gRPC from anywhere, nothing else.
    gateway_grpc = policies["gateway"]["spec"]["ingress"][0]
    assert gateway_grpc == {"ports": [{"port": "grpc", "protocol": "TCP"}]}
    # Nobody in the platform calls dispatch or bidding over gRPC (dispatch reads aggregation's partials
    # from Kafka): operators' tools only. Forecasting is called by bidding (the offers' quantiles).
    for name in ("dispatch", "bidding"):
        grpc_rule = policies[name]["spec"]["ingress"][0]
        assert grpc_rule["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vpp-ops"}}}
        ], name
    assert policies["forecasting"]["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": selector("bidding")}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vpp-ops"}}},
    ]


def selector(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/name": "vpp",
    }


def test_network_policy_lets_in_enabled_callers_only(charts: dict[Path, helm.Chart]) -> None:
    values = {"networkPolicy": {"enabled": True}, "components": {"market": {"enabled": True}}}
    docs = render(charts[VPP_CHART], values)
    policies = {component_of(p): p for p in of_kind(docs, "NetworkPolicy")}
    grpc_rule = policies["aggregation"]["spec"]["ingress"][0]
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": selector("aggregation")}},
        {"podSelector": {"matchLabels": selector("bidding")}},
        {"podSelector": {"matchLabels": selector("market")}},
    ]
    assert policies["forecasting"]["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": selector("bidding")}}
    ]
    # No caller at all: the gRPC port is closed, only metrics stay open.
    for name in ("dispatch", "bidding", "market"):
        assert [rule["ports"][0]["port"] for rule in policies[name]["spec"]["ingress"]] == ["metrics"], name


def test_service_specific_env(rendered: dict[str, list[Doc]]) -> None:
    def env_of(case_id: str, component: str) -> dict[str, dict[str, Any]]:
        dep = next(d for d in of_kind(rendered[case_id], "Deployment") if component_of(d) == component)
        return by_name(dep["spec"]["template"]["spec"]["containers"][0]["env"])

    production = env_of("vpp:values.yaml", "forecasting")
    assert production["VPP_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vpp-forecasting-store", "key": "url"}
    demo = env_of("vpp:ci/demo-values.yaml", "forecasting")
    assert demo["VPP_STORE_URL"]["value"].startswith("sqlite:////tmp/")
    # The market simulator finds aggregation through the release's Service (env values go through tpl).
    assert env_of("vpp:ci/demo-values.yaml", "market")["VPP_AGGREGATION_TARGET"]["value"] == (
        f"{RELEASE}-aggregation:{GRPC_PORT}"
    )
    # Bidding reads site state and forecasts, and keeps its market store in PostgreSQL in production.
    bidding = env_of("vpp:values.yaml", "bidding")
    assert bidding["VPP_FORECASTING_TARGET"]["value"] == f"{RELEASE}-forecasting:{GRPC_PORT}"
    assert bidding["VPP_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vpp-bidding-store", "key": "url"}
    assert env_of("vpp:ci/demo-values.yaml", "bidding")["VPP_STORE_URL"]["value"].startswith("sqlite:////tmp/")


@pytest.mark.parametrize("disabled", COMPONENTS)
def test_disabled_component_renders_nothing(charts: dict[Path, helm.Chart], disabled: str) -> None:
    values = load_values(VPP_CHART, "ci/ha-values.yaml") or {}
    values["components"] = {name: {"enabled": name != disabled} for name in COMPONENTS}
    docs = render(charts[VPP_CHART], values)
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs}
    assert disabled not in components
    assert components == (set(COMPONENTS) - {disabled}) | {None}  # None: the shared ConfigMap
    assert not [d for d in docs if disabled in d["metadata"]["name"]]


def test_all_disabled_leaves_only_shared_config(charts: dict[Path, helm.Chart]) -> None:
    docs = render(charts[VPP_CHART], {"components": {name: {"enabled": False} for name in COMPONENTS}})
    assert [d["kind"] for d in docs] == ["ConfigMap"]


def test_component_overrides(charts: dict[Path, helm.Chart]) -> None:
    values = {
        "image": {"tag": "1.2.3"},
        "config": {"kafkaBootstrapServers": "b1.example:9092,b2.example:9092"},
        "components": {
            "dispatch": {
                "enabled": True,
                "replicas": 4,
                "image": {"repository": "registry.example/dispatch", "tag": "9.9.9"},
                "env": {"VPP_LOG_LEVEL": "DEBUG"},
                "labels": {"team": "ops"},
            }
        },
    }
    docs = render(charts[VPP_CHART], values)
    deployments = {component_of(d): d for d in of_kind(docs, "Deployment")}
    dispatch = deployments["dispatch"]
    (container,) = dispatch["spec"]["template"]["spec"]["containers"]
    assert dispatch["spec"]["replicas"] == 4
    assert container["image"] == "registry.example/dispatch:9.9.9"
    assert by_name(container["env"])["VPP_LOG_LEVEL"]["value"] == "DEBUG"
    assert dispatch["spec"]["template"]["metadata"]["labels"]["team"] == "ops"
    assert "team" not in dispatch["spec"]["selector"]["matchLabels"]
    assert deployments["aggregation"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.2.3")
    (configmap,) = of_kind(docs, "ConfigMap")
    assert configmap["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "b1.example:9092,b2.example:9092"


BAD_VPP_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("negative replicas", {"components": {"gateway": {"replicas": -1}}}, "replicas"),
    ("unknown component", {"components": {"billing": {"enabled": True}}}, "billing"),
    ("unknown component key", {"components": {"gateway": {"replica": 2}}}, "replica"),
    ("unknown top-level key", {"kafka": {"bootstrap": "x:9092"}}, "kafka"),
    (
        "writable root fs",
        {"defaults": {"securityContext": {"readOnlyRootFilesystem": False}}},
        "readOnlyRootFilesystem",
    ),
    ("root user allowed", {"defaults": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
    ("bootstrap without port", {"config": {"kafkaBootstrapServers": "kafka"}}, "kafkaBootstrapServers"),
    ("bad service type", {"components": {"gateway": {"service": {"type": "Ingress"}}}}, "type"),
    ("caller not a component", {"components": {"dispatch": {"networkPolicy": {"allowFrom": ["ui"]}}}}, "allowFrom"),
    ("port out of range", {"ports": {"grpc": 70000}}, "grpc"),
    ("no site partitions", {"config": {"sitePartitions": 0}}, "sitePartitions"),
    ("fractional site partitions", {"config": {"sitePartitions": 4.5}}, "sitePartitions"),
    ("group prefix with a space", {"config": {"kafkaGroupPrefix": "vpp prod"}}, "kafkaGroupPrefix"),
    ("negative drain", {"config": {"shutdownDrainS": -1}}, "shutdownDrainS"),
    ("zero produce timeout", {"config": {"kafkaProduceTimeoutS": 0}}, "kafkaProduceTimeoutS"),
    ("unknown IP family", {"podIPFamily": "dual"}, "podIPFamily"),
    (
        "instance id from elsewhere",
        {"components": {"dispatch": {"env": {"VPP_INSTANCE_ID": "dispatch-0"}}}},
        "VPP_INSTANCE_ID",
    ),
    (
        "partitions per component",
        {"components": {"aggregation": {"extraEnv": [{"name": "VPP_SITE_PARTITIONS", "value": "8"}]}}},
        "extraEnv/0/name",
    ),
    (
        "group prefix per component",
        {"components": {"dispatch": {"env": {"VPP_KAFKA_GROUP_PREFIX": "x."}}}},
        "VPP_KAFKA_GROUP_PREFIX",
    ),
    (
        "label clobbers selector",
        {"components": {"gateway": {"labels": {"app.kubernetes.io/component": "x"}}}},
        "labels",
    ),
]


@pytest.mark.parametrize(
    ("values", "offending"), [(v, o) for _, v, o in BAD_VPP_VALUES], ids=[i for i, _, _ in BAD_VPP_VALUES]
)
def test_vpp_schema_rejects_bad_values(charts: dict[Path, helm.Chart], values: dict[str, Any], offending: str) -> None:
    chart = charts[VPP_CHART]
    with pytest.raises(helm.HelmValuesError, match=offending):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values_file", ["values.yaml", "ci/demo-values.yaml", "ci/ha-values.yaml"])
def test_vpp_schema_accepts_shipped_values(charts: dict[Path, helm.Chart], values_file: str) -> None:
    chart = charts[VPP_CHART]
    chart.validate_schema(chart.merge_values(yaml.safe_load((VPP_CHART / values_file).read_text())))


# --- edge-agent chart -----------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("edge-agent:")])
def test_edge_agent_one_pod_recreate_tcp_probes(rendered: dict[str, list[Doc]], case_id: str) -> None:
    docs = rendered[case_id]
    (dep,) = of_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    agent = dep["spec"]["template"]["spec"]["containers"][0]
    assert agent["name"] == "edge-agent"
    assert agent["command"] == ["python", "-m", "vpp_edge"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["tcpSocket"] == {"port": "metrics"}
        assert "grpc" not in agent[probe]
    env = by_name(agent["env"])
    assert set(env) == {
        "VPP_EDGE_SITE_ID",
        "VPP_EDGE_SITE_TOKEN",
        "VPP_EDGE_GATEWAY_TARGET",
        "VPP_EDGE_MODBUS_HOST",
        "VPP_EDGE_MODBUS_PORT",
        "VPP_EDGE_MODBUS_UNIT_ID",
        "VPP_EDGE_METRICS_PORT",
        "VPP_EDGE_UPLINK_BATCH_INTERVAL_S",
        "VPP_EDGE_UPLINK_DISPATCHED_BATCH_INTERVAL_S",
        "VPP_EDGE_UPLINK_ACK_MAX_DELAY_S",
        "VPP_EDGE_UPLINK_ACK_SPREAD_S",
        "VPP_EDGE_LOG_LEVEL",
    }
    assert "value" not in env["VPP_EDGE_SITE_TOKEN"]
    assert env["VPP_EDGE_SITE_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "vpp-edge-site-token",
        "key": "site-token",
    }
    assert env["VPP_EDGE_METRICS_PORT"]["value"] == str(by_name(agent["ports"])["metrics"]["containerPort"])


def test_edge_agent_simulator_sidecar(rendered: dict[str, list[Doc]]) -> None:
    (dep,) = of_kind(rendered["edge-agent:ci/site-values.yaml"], "Deployment")
    agent, simulator = dep["spec"]["template"]["spec"]["containers"]
    assert simulator["command"] == ["python", "-m", "vpp_devsim"]
    assert simulator["args"] == ["--host", "127.0.0.1", "--port", "1502", "--unit-id", "1"]
    assert "ports" not in simulator  # loopback only
    env = by_name(agent["env"])
    assert env["VPP_EDGE_MODBUS_HOST"]["value"] == "127.0.0.1"
    assert env["VPP_EDGE_MODBUS_PORT"]["value"] == "1502"
    assert env["VPP_EDGE_GATEWAY_TARGET"]["value"] == "vpp-gateway.vpp.svc.cluster.local:50051"
    assert env["VPP_EDGE_UPLINK_BATCH_INTERVAL_S"]["value"] == "1"


def test_edge_agent_real_device(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["edge-agent:ci/hardware-values.yaml"]
    (dep,) = of_kind(docs, "Deployment")
    (agent,) = dep["spec"]["template"]["spec"]["containers"]
    env = by_name(agent["env"])
    assert env["VPP_EDGE_SITE_ID"]["value"] == "site-okinawa-017"
    assert env["VPP_EDGE_MODBUS_HOST"]["value"] == "192.168.10.20"
    assert env["VPP_EDGE_MODBUS_PORT"]["value"] == "502"
    assert env["VPP_EDGE_MODBUS_UNIT_ID"]["value"] == "1"
    # The agent's defaults (vpp_edge.settings): samples batched for 10 s, our ack_seq held at most 1.5 s,
    # a command ack within a random 0..1 s.
    assert env["VPP_EDGE_UPLINK_BATCH_INTERVAL_S"]["value"] == "10"
    assert env["VPP_EDGE_UPLINK_DISPATCHED_BATCH_INTERVAL_S"]["value"] == "2"  # under dispatch (docs/dispatch.md)
    assert env["VPP_EDGE_UPLINK_ACK_MAX_DELAY_S"]["value"] == "1.5"
    assert float(env["VPP_EDGE_UPLINK_ACK_SPREAD_S"]["value"]) == 1.0
    assert [d["kind"] for d in docs] == ["Deployment"]


def test_edge_agent_requires_site_and_gateway(charts: dict[Path, helm.Chart]) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"site\.id is required"):
        render(charts[EDGE_CHART], None)
    with pytest.raises(helm.HelmRenderError, match=r"modbus\.host is required"):
        render(charts[EDGE_CHART], {"site": {"id": "s1"}, "gateway": {"target": "gw:50051"}})


BAD_EDGE_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("two agents for one site", {"replicas": 2}, "replicas"),
    ("negative replicas", {"replicas": -1}, "replicas"),
    ("unknown key", {"sidecar": {"enabled": True}}, "sidecar"),
    ("unit id out of range", {"modbus": {"unitId": 300}}, "unitId"),
    ("target without port", {"gateway": {"target": "gateway.example"}}, "target"),
    ("writable root fs", {"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ("negative batch interval", {"uplink": {"batchIntervalS": -1}}, "batchIntervalS"),
    ("batch interval over a minute", {"uplink": {"batchIntervalS": 120}}, "batchIntervalS"),
    ("acks never sent", {"uplink": {"ackMaxDelayS": 0}}, "ackMaxDelayS"),
    ("unknown uplink key", {"uplink": {"batchSize": 10}}, "batchSize"),
    ("chart-set env overridden", {"env": {"VPP_EDGE_SITE_ID": "other"}}, "VPP_EDGE_SITE_ID"),
]


@pytest.mark.parametrize(
    ("values", "offending"), [(v, o) for _, v, o in BAD_EDGE_VALUES], ids=[i for i, _, _ in BAD_EDGE_VALUES]
)
def test_edge_schema_rejects_bad_values(charts: dict[Path, helm.Chart], values: dict[str, Any], offending: str) -> None:
    chart = charts[EDGE_CHART]
    with pytest.raises(helm.HelmValuesError, match=offending):
        chart.validate_schema(chart.merge_values(values))
