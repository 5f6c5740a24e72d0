"""Render, lint and validate the Quarry chart (run through helm/check.sh)."""
import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

CHART = "helm/quarry"
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.0")
RELEASE, NAMESPACE = "quarry", "quarry"
DIGEST = "sha256:" + "ab" * 32

# (name, values files, --set style overrides). Each case must render, lint clean and validate.
CASES = [
    ("default", [], {}),
    ("tee=gramine-sgx", [], {"tee": "gramine-sgx"}),
    ("tee=tdx", [], {"tee": "tdx"}),
    ("tee=snp", [], {"tee": "snp"}),
    ("tee=simulated", [], {"tee": "simulated", "simulation": {"platformSecret": "quarry-sim-platform"}}),
    ("etcd, 3 replicas, cert-manager", [], {
        "coordinator": {"replicas": 3},
        "store": {"etcd": {"endpoints": ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"], "tlsSecret": "etcd-client"}},
        "injector": {"tls": {"certManagerIssuer": "quarry-ca"}, "meshProxy": True},
    }),
    ("no metrics, no probes, no injector", [], {"metrics": {"enabled": False}, "probes": {"enabled": False}, "injector": {"enabled": False}}),
    ("xfsc-ocm", ["examples/xfsc-ocm/values-quarry.yaml"], {}),
]

# Values that must be refused, by the schema or by the templates.
REFUSED = [
    ("unknown tee", {"tee": "sev"}),
    ("image by tag", {"coordinator": {"image": {"repository": "x/coordinator", "digest": "latest"}}}),
    ("replicas without etcd", {"coordinator": {"replicas": 2}}),
    ("etcd prefix without slashes", {"store": {"etcd": {"endpoints": ["https://e:2379"], "prefix": "quarry"}}}),
    ("simulated without platform", {"tee": "simulated"}),
    ("probes without metrics", {"metrics": {"enabled": False}}),
    ("typo in a key", {"coordinator": {"replica": 2}}),
]


def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_values(files, overrides):
    values = {}
    for f in files:
        values = merge(values, helm.values_from_yaml(open(f).read()))
    return merge(values, overrides)


def render(values):
    chart = helm.Chart.load(CHART)
    chart.validate_schema(chart.merge_values(values))
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered):
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield path, doc


def check_case(name, files, overrides):
    values = load_values(files, overrides)
    failures = []
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
    for m in report.get("messages", []):
        if m.get("severity", 0) >= 2:
            failures.append(f"lint: {m.get('path')}: {m.get('error')}")
    failures += [f"lint: {e}" for e in report.get("errors", [])]
    rendered = render(values)
    kinds = []
    for path, obj in objects(rendered):
        kind = obj.get("kind", "?")
        kinds.append(kind)
        if kind in ("Certificate",):  # CRD (cert-manager): no upstream schema
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{path}: {kind}/{obj.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{path}: {kind}: no schema: {e}")
    for path, obj in objects(rendered):
        failures += invariants(name, values, obj)
    return kinds, failures


def invariants(name, values, obj):
    """Properties the chart promises, beyond schema validity."""
    out = []
    kind, meta = obj.get("kind"), obj.get("metadata", {})
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") if kind in ("StatefulSet", "Deployment") else None
    if pod is not None:
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{kind}/{meta['name']}: service account token is mounted")
        for c in pod.get("containers", []):
            if "@sha256:" not in c["image"]:
                out.append(f"{kind}/{meta['name']}: image {c['image']} not by digest")
    if kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        out.append(f"{kind}/{meta['name']}: the chart needs no RBAC")
    if kind == "MutatingWebhookConfiguration":
        for w in obj["webhooks"]:
            sel = w.get("objectSelector", {}).get("matchExpressions", [])
            if w.get("failurePolicy") != "Fail" or {"key": "quarry/marble-type", "operator": "Exists"} not in sel:
                out.append(f"webhook {w['name']}: must fail closed for labelled pods only")
    if kind == "StatefulSet":
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        tee = values.get("tee", "tdx")
        if env.get("QUARRY_TEE") != tee:
            out.append(f"coordinator QUARRY_TEE={env.get('QUARRY_TEE')} for tee {tee}")
        if tee == "gramine-sgx" and "sgx.intel.com/epc" not in c.get("resources", {}).get("limits", {}):
            out.append("gramine-sgx coordinator without SGX EPC limit")
        if tee in ("tdx", "snp") and not pod.get("runtimeClassName"):
            out.append(f"{tee} coordinator without runtimeClassName")
        if values.get("probes", {}).get("enabled", True) and c["readinessProbe"]["httpGet"]["path"] != "/readyz":
            out.append("readiness probe is not /readyz")
        etcd = values.get("store", {}).get("etcd", {}).get("endpoints")
        if not spec.get("volumeClaimTemplates"):
            out.append("coordinator without a PVC (state, or in etcd mode the sealed key copy)")
        if etcd and (env.get("QUARRY_STORE") != "etcd" or not env.get("QUARRY_PEER_ADVERTISE")):
            out.append("etcd endpoints without etcd mode (QUARRY_STORE, QUARRY_PEER_ADVERTISE)")
        if not etcd and "QUARRY_STORE" in env:
            out.append("etcd mode without etcd endpoints")
    return out


def check_refused(name, overrides):
    try:
        render(overrides)
    except helm.HelmError as e:
        return " ".join(str(e).split())[:200]
    return None


def main():
    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk), kubernetes-validate against Kubernetes {KUBE_VERSION}")
    failed = 0
    for name, files, overrides in CASES:
        try:
            kinds, failures = check_case(name, files, overrides)
        except Exception as e:  # a case that cannot render is a failure, not a crash
            kinds, failures = [], [f"render: {type(e).__name__}: {e}"]
        status = "ok" if not failures else "FAILED"
        print(f"{status:6} {name}: {len(kinds)} objects ({', '.join(sorted(set(kinds)))})")
        for f in failures:
            print(f"         {f}")
        failed += bool(failures)
    for name, overrides in REFUSED:
        why = check_refused(name, overrides)
        if why is None:
            print(f"FAILED refused {name}: rendered, expected a refusal")
            failed += 1
        else:
            print(f"ok     refused {name}: {why}")
    total = len(CASES) + len(REFUSED)
    print(f"chart: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
