"""Offline validation of the Kubernetes manifests in this folder.

  python check_manifests.py DIR [RENDERED.yaml] [--configs OUTDIR]

1. Schema: every core resource in every *.yaml (but kustomization.yaml)
   against the Kubernetes OpenAPI schemas that the PyPI package
   kubernetes-validate ships, strict (unknown fields fail), for the oldest
   supported and the newest known Kubernetes. cert-manager.io resources
   have no schema there: they are skipped by name and checked by hand below.
   RENDERED (the `kubectl kustomize` output) is validated the same way.
2. Consistency: kustomization.yaml lists every manifest but the optional
   ones; the milvus-dr configs in ConfigMaps parse; their TLS paths are
   files the pod mounts from Secrets; listen ports are the container ports
   the probes and Services use; every https/http host they dial is a
   Service (or a StatefulSet pod under its headless Service) here, or a
   Milvus Service outside these manifests; witness pod names, Raft ids and
   certificate identities agree; cert-manager Certificates issue the
   Secrets the workloads mount, for the identities the configs expect.
3. --configs OUTDIR: writes each config to OUTDIR/<kind>/<name>.yaml so the
   caller can run `dr-agent --check` / `dr-witness --check` on them.
Exit 1 with one line per problem.
"""

import os
import sys
from urllib.parse import urlsplit

import yaml
import kubernetes_validate.utils as kv

MIN_K8S = "1.31.0"  # StatefulSet ordinals (GA 1.31), ReadWriteOncePod (GA 1.29)
OPTIONAL = {"cert-manager.yaml", "secrets.example.yaml"}  # not applied by kustomize
EXTERNAL_HOSTS = {"milvus-dc-a", "milvus-dc-b"}  # the Milvus Helm releases' Services

args = sys.argv[1:]
configs_out = None
if "--configs" in args:
    i = args.index("--configs")
    configs_out = args[i + 1]
    del args[i : i + 2]
folder = args[0]
rendered = args[1] if len(args) > 1 else None

problems = []
notes = []


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def schema_check(docs, where):
    ok = 0
    skipped = []
    for d in docs:
        kn = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("cert-manager.io/"):
            skipped.append(kn)
            continue
        for version in (MIN_K8S, kv.latest_version()):
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}: {kn} against Kubernetes {version}: {path}: {e.message}")
            except kv.SchemaNotFoundError:
                problems.append(f"{where}: {kn}: no schema for {d.get('apiVersion')} {d.get('kind')} in Kubernetes {version}")
        ok += 1
    if skipped:
        print(f"skip schema {where}: {len(skipped)} cert-manager.io resources (CRDs, not in the schema set;"
              f" checked for consistency below): {', '.join(skipped)}")
    return ok


files = sorted(f for f in os.listdir(folder) if f.endswith(".yaml") and f != "kustomization.yaml")
by_file = {f: load(os.path.join(folder, f)) for f in files}
checked = 0
before = len(problems)
for f, docs in by_file.items():
    checked += schema_check(docs, f)
if len(problems) == before:
    print(f"ok   schema: {checked} resources in {len(files)} files, strict, Kubernetes {MIN_K8S} and {kv.latest_version()}")
if rendered:
    before = len(problems)
    rdocs = load(rendered)
    n = schema_check(rdocs, "kustomize output")
    namespaces = {d["metadata"].get("namespace") for d in rdocs if d["kind"] != "Namespace"}
    if namespaces != {"milvus-dr"}:
        problems.append(f"kustomize output: resources in namespaces {namespaces}, expected milvus-dr")
    if len(problems) == before:
        print(f"ok   schema: kustomize output, {n} resources, all in namespace milvus-dr")

# --- kustomization lists every manifest but the optional ones
kust = yaml.safe_load(open(os.path.join(folder, "kustomization.yaml")))
listed = set(kust.get("resources", []))
for f in files:
    if f not in listed and f not in OPTIONAL:
        problems.append(f"kustomization.yaml: {f} is not in resources (nor an optional file)")
for r in listed:
    if r not in files:
        problems.append(f"kustomization.yaml: resource {r} does not exist")

# --- index the applied resources
applied = [d for f in files if f not in OPTIONAL for d in by_file[f]]
index = {}
for d in applied:
    index[(d["kind"], d["metadata"]["name"])] = d
services = {n: d for (k, n), d in index.items() if k == "Service"}
configmaps = {n: d for (k, n), d in index.items() if k == "ConfigMap"}
certs = {}  # secretName -> dnsNames
for d in by_file.get("cert-manager.yaml", []):
    if d["kind"] == "Certificate" and not d["spec"].get("isCA"):
        certs[d["spec"]["secretName"]] = d["spec"].get("dnsNames", [])
        usages = set(d["spec"].get("usages", []))
        if not {"server auth", "client auth"} <= usages:
            problems.append(f"cert-manager.yaml: Certificate {d['metadata']['name']} lacks server auth + client auth usages")
example_secrets = {d["metadata"]["name"]: d for d in by_file.get("secrets.example.yaml", []) if d["kind"] == "Secret"}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def mounted_files(pod, container):
    """path in the container -> (secret name, key) for Secret-backed files."""
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    out = {}
    for m in container.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        sources = []
        if "secret" in v:
            s = v["secret"]
            sources.append((s["secretName"], s.get("items")))
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src:
                sources.append((src["secret"]["name"], src["secret"].get("items")))
        for name, items in sources:
            keys = items or [{"key": k, "path": k} for k in ("tls.crt", "tls.key", "ca.crt")]
            for it in keys:
                out[os.path.join(m["mountPath"], it["path"])] = (name, it["key"])
    return out


def config_files(pod, container):
    """path in the container -> (configmap name, key)."""
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    out = {}
    for m in container.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        if "configMap" in v:
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None:
                problems.append(f"ConfigMap {v['configMap']['name']} is mounted but not defined")
                continue
            for key in cm.get("data", {}):
                out[os.path.join(m["mountPath"], key)] = (cm["metadata"]["name"], key)
    return out


def resolve(url, who, what, pods_of):
    """The dialled host must be a Service with that port (or a pod under a
    headless Service), or a known external Milvus."""
    u = urlsplit(url)
    host, port = u.hostname, u.port
    parts = host.split(".")
    if host in EXTERNAL_HOSTS:
        return
    if len(parts) == 1:
        svc = services.get(host)
        if svc is None:
            problems.append(f"{who}: {what} {url}: no Service {host}")
            return
    elif len(parts) == 2:
        pod, svcname = parts
        svc = services.get(svcname)
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"{who}: {what} {url}: {svcname} is not a headless Service here")
            return
        if pod not in pods_of.get(svcname, set()):
            problems.append(f"{who}: {what} {url}: no StatefulSet pod {pod} under Service {svcname}")
    else:
        notes.append(f"{who}: {what} {url}: fully qualified, not checked")
        return
    if port not in {p["port"] for p in svc["spec"]["ports"]}:
        problems.append(f"{who}: {what} {url}: Service {svc['metadata']['name']} has no port {port}")


# StatefulSet pod names per headless Service
pods_of = {}
for (k, n), d in index.items():
    if k == "StatefulSet":
        start = d["spec"].get("ordinals", {}).get("start", 0)
        pods_of.setdefault(d["spec"]["serviceName"], set()).update(
            f"{n}-{i}" for i in range(start, start + d["spec"]["replicas"]))

written = []
workloads = [d for d in applied if d["kind"] in ("Deployment", "StatefulSet")]
for w in workloads:
    who = f"{w['kind']} {w['metadata']['name']}"
    spec = w["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if not selects(spec["selector"]["matchLabels"], labels):
        problems.append(f"{who}: selector does not match its pod labels")
    c = pod["containers"][0]
    binary = c.get("args", [None])[0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    secrets_mounted = mounted_files(pod, c)
    cfg_files = config_files(pod, c)

    if w["kind"] == "Deployment":
        if spec.get("replicas") != 1 or spec.get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{who}: an agent must be replicas: 1 with strategy Recreate")
        pod_names = [None]
    else:
        start = spec.get("ordinals", {}).get("start", 0)
        pod_names = [f"{w['metadata']['name']}-{i}" for i in range(start, start + spec["replicas"])]
        svc = services.get(spec["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"{who}: serviceName {spec['serviceName']} is not a headless Service")
        pdbs = [d for d in applied if d["kind"] == "PodDisruptionBudget" and selects(d["spec"]["selector"]["matchLabels"], labels)]
        if len(pdbs) != 1 or pdbs[0]["spec"].get("maxUnavailable") != 1:
            problems.append(f"{who}: needs one PodDisruptionBudget with maxUnavailable: 1")
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append(f"{who}: podManagementPolicy should be Parallel")

    for pod_name in pod_names:
        var = "DR_AGENT_CONFIG" if binary == "dr-agent" else "DR_WITNESS_CONFIG"
        path = env.get(var, "")
        if pod_name:
            path = path.replace("$(POD_NAME)", pod_name)
        if path not in cfg_files:
            problems.append(f"{who}: {var} {path} is not a file of a mounted ConfigMap")
            continue
        cm, key = cfg_files[path]
        where = f"{who} ({pod_name or 'pod'}): ConfigMap {cm} {key}"
        cfg = yaml.safe_load(configmaps[cm]["data"][key])
        kind = "agent" if binary == "dr-agent" else "witness"
        if configs_out:
            os.makedirs(os.path.join(configs_out, kind), exist_ok=True)
            out = os.path.join(configs_out, kind, f"{cm}--{key}")
            with open(out, "w") as f:
                f.write(configmaps[cm]["data"][key])
            written.append(out)

        # listeners = container ports; probes and Services use them
        lg, lm = port_of(cfg["listen"]["grpc"]), port_of(cfg["listen"]["metrics"])
        if cports.get("grpc") != lg or cports.get("metrics") != lm:
            problems.append(f"{where}: listen ports {lg}/{lm} are not the container ports {cports}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c.get(probe, {}).get("httpGet")
            if not pr or pr.get("port") not in ("metrics", lm):
                problems.append(f"{where}: {probe} is not an httpGet on the metrics port")
            elif kind == "witness" and pr["path"] != "/metrics":
                problems.append(f"{where}: {probe} {pr['path']}: the witness serves /metrics only")
            elif kind == "agent" and pr["path"] not in ("/healthz", "/metrics"):
                problems.append(f"{where}: {probe} {pr['path']}: use /healthz (never /dr/primary)")

        # TLS files come from Secrets, with the expected identity
        if kind == "agent":
            identity = f"agent.{cfg['datacenter']}"
        else:
            identity = f"witness-{cfg['id']}"
            if pod_name != f"witness-{cfg['id']}":
                problems.append(f"{where}: pod {pod_name} runs witness id {cfg['id']}")
        used = set()
        for field, key_want in (("ca", "ca.crt"), ("cert", "tls.crt"), ("key", "tls.key")):
            p = cfg["tls"][field]
            if p not in secrets_mounted:
                problems.append(f"{where}: tls.{field} {p} is not a file mounted from a Secret")
                continue
            secret, skey = secrets_mounted[p]
            used.add(secret)
            if skey != key_want:
                problems.append(f"{where}: tls.{field} {p} is Secret {secret} key {skey}, expected {key_want}")
        for secret in used:
            if secret in certs and identity not in certs[secret]:
                problems.append(f"{where}: Secret {secret} is issued for {certs[secret]}, the peers expect {identity}")
            if secret not in certs:
                problems.append(f"{where}: no cert-manager Certificate issues Secret {secret}")
            if secret not in example_secrets:
                problems.append(f"{where}: secrets.example.yaml does not show Secret {secret}")

        # state_dir on the persistent volume
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        state_ok = False
        for mp, vname in mounts.items():
            if str(cfg["state_dir"]).startswith(mp):
                if vname in claims or "persistentVolumeClaim" in vols.get(vname, {}):
                    state_ok = True
        if not state_ok:
            problems.append(f"{where}: state_dir {cfg['state_dir']} is not on a persistent volume")

        # every dialled address resolves here
        if kind == "agent":
            me = cfg["datacenter"]
            for dc, d in cfg["datacenters"].items():
                resolve(d["milvus"]["endpoint"], where, f"datacenters.{dc}.milvus.endpoint", pods_of)
                resolve(d["milvus"]["health_url"], where, f"datacenters.{dc}.milvus.health_url", pods_of)
                resolve(d["agent"], where, f"datacenters.{dc}.agent", pods_of)
            own = services.get(urlsplit(cfg["datacenters"][me]["agent"]).hostname)
            if own and not selects(own["spec"]["selector"], labels):
                problems.append(f"{where}: datacenters.{me}.agent names a Service that does not select this pod")
            for wid, url in cfg.get("witnesses", {}).items():
                resolve(url, where, f"witnesses.{wid}", pods_of)
        else:
            for dc, d in cfg["datacenters"].items():
                resolve(d["health_url"], where, f"datacenters.{dc}.health_url", pods_of)
            for wid, url in cfg["witnesses"].items():
                resolve(url, where, f"witnesses.{wid}", pods_of)
                if urlsplit(url).hostname.split(".")[0] != f"witness-{wid}":
                    problems.append(f"{where}: witnesses.{wid} {url} is not pod witness-{wid}")

# Services select something and target named ports that exist
for name, svc in services.items():
    targets = [w for w in workloads if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
    if not targets:
        problems.append(f"Service {name}: selects no workload")
    for w in targets:
        names = {p["name"] for p in w["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                problems.append(f"Service {name}: targetPort {p['targetPort']} is not a port of {w['metadata']['name']}")

for n in notes:
    print(n)
for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"ok   consistency: {len(workloads)} workloads, {len(services)} Services, {len(configmaps)} ConfigMaps, "
      f"{len(certs)} Certificates; {len(written) or 'no'} configs extracted")
