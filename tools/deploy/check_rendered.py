"""Checks what the chart rendered beyond what the Kubernetes schemas can say.

kubernetes-validate proves each object is well formed; this proves the objects fit the service
and the chart's promises (docs/chimera-serve.md, "Deploying"):
  - no Secret is rendered (the chart only names Secrets);
  - the Deployment has the expected replicas, no service-account token, a non-root user, the
    RuntimeDefault seccomp profile, a read-only root filesystem, no privilege escalation and
    every capability dropped; its probes are GET /healthz on the API port; SQLite runs with the
    Recreate strategy (one holder of the database lock at a time);
  - the ServiceAccount, if rendered, mounts no token; a PodDisruptionBudget only with replicas > 1;
  - serve.yaml (in the ConfigMap) is YAML, listens on the container's port, has the expected
    database kind, and every file it names is on a mount: the read-only files as items of the
    projected config volume, the database and the state directory on the writable data volume.

    python3 check_rendered.py MANIFESTS.yaml --replicas N --database sqlite|postgres
        [--serve-yaml-out FILE]
Exits 1 naming each failed check.
"""

import argparse
import posixpath
import sys

import yaml

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def serve_paths(cfg):
    """(key, path, writable) for every file or directory serve.yaml names."""
    out = [("registry", cfg.get("registry"), False), ("state", cfg.get("state"), True)]
    db = cfg.get("database")
    if isinstance(db, str):
        out.append(("database", db, True))
    elif isinstance(db, dict):
        for k in ("url_file", "password_file", "ca_file"):
            if k in db:
                out.append((f"database.{k}", db[k], False))
    for k in ("tokens", "trust_metadata"):
        if k in cfg:
            out.append((k, cfg[k], False))
    for i, p in enumerate(cfg.get("trust_roots", [])):
        out.append((f"trust_roots[{i}]", p, False))
    if "ca_file" in cfg.get("oidc", {}):
        out.append(("oidc.ca_file", cfg["oidc"]["ca_file"], False))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifests")
    ap.add_argument("--replicas", type=int, required=True)
    ap.add_argument("--database", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--serve-yaml-out")
    a = ap.parse_args()

    with open(a.manifests) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    check("Secret" not in by_kind, "a Secret is rendered: the chart must only name Secrets")
    deps = by_kind.get("Deployment", [])
    if not check(len(deps) == 1, f"{len(deps)} Deployments rendered, expected 1"):
        return
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    check(spec["replicas"] == a.replicas, f"replicas {spec['replicas']}, expected {a.replicas}")
    if a.database == "sqlite":
        check(spec["strategy"]["type"] == "Recreate", "SQLite without the Recreate strategy")
    check(pod.get("automountServiceAccountToken") is False, "the pod mounts a service-account token")
    for sa in by_kind.get("ServiceAccount", []):
        check(sa.get("automountServiceAccountToken") is False, "the ServiceAccount automounts its token")
    check(
        bool(by_kind.get("PodDisruptionBudget")) == (a.replicas > 1),
        "a PodDisruptionBudget must be rendered exactly when replicas > 1",
    )
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "pod: runAsNonRoot is not true")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccomp is not RuntimeDefault")

    (ctr,) = pod["containers"]
    sc = ctr.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True, "container: root filesystem is writable")
    check(sc.get("allowPrivilegeEscalation") is False, "container: privilege escalation allowed")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities not all dropped")
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    check("http" in ports, "container: no port named http")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = ctr.get(probe, {}).get("httpGet", {})
        check(get.get("path") == "/healthz" and get.get("port") == "http", f"{probe} is not GET /healthz on http")

    mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    # Files of the projected config volume: mount path + item path.
    projected = set()
    for m in mounts.values():
        src = volumes.get(m["name"], {}).get("projected")
        if src:
            for s in src["sources"]:
                for kind in ("configMap", "secret"):
                    for item in s.get(kind, {}).get("items", []):
                        projected.add(posixpath.join(m["mountPath"], item["path"]))

    cms = [c for c in by_kind.get("ConfigMap", []) if "serve.yaml" in c.get("data", {})]
    if not check(len(cms) == 1, "no ConfigMap with serve.yaml"):
        return
    cfg = yaml.safe_load(cms[0]["data"]["serve.yaml"])
    args = ctr.get("args", [])
    check(
        args[:1] == ["--config"] and len(args) == 2 and args[1] in projected,
        f"args {args}: --config must name serve.yaml on the config volume",
    )
    host, _, port = str(cfg.get("listen", "")).rpartition(":")
    check(port.isdigit() and int(port) == ports.get("http"), f"listen {cfg.get('listen')} is not the http port")
    db = cfg.get("database")
    if a.database == "sqlite":
        check(isinstance(db, str), f"database: {db!r} is not a SQLite file path")
    else:
        check(isinstance(db, dict) and "url_file" in db, f"database: {db!r} is not a section with url_file")
    for key, path, writable in serve_paths(cfg):
        if not check(isinstance(path, str) and path.startswith("/"), f"serve.yaml {key}: {path!r} is not absolute"):
            continue
        if writable:
            on = [m for p, m in mounts.items() if under(path, p) and not m.get("readOnly")]
            check(on, f"serve.yaml {key}: {path} is on no writable mount")
        elif key == "registry" and path not in projected:
            # No registry ConfigMap: a missing devices.json is an empty fleet, by design.
            check(any(under(path, p) for p in mounts), f"serve.yaml registry: {path} is on no mount")
        else:
            check(path in projected, f"serve.yaml {key}: {path} is not a file of the config volume")

    for np in by_kind.get("NetworkPolicy", []):
        ports_in = [p.get("port") for r in np["spec"].get("ingress", []) for p in r.get("ports", [])]
        check(ports.get("http") in ports_in, "NetworkPolicy: the API port is not let in")

    if a.serve_yaml_out:
        with open(a.serve_yaml_out, "w") as f:
            f.write(cms[0]["data"]["serve.yaml"])


main()
if failures:
    for f in failures:
        print(f"check_rendered: {f}", file=sys.stderr)
    sys.exit(1)
