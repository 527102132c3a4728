"""deploy/kubernetes, validated offline: no cluster exists here.

* Every manifest and every kustomize build (base, overlays/dev, overlays/prod) parses and is
  valid *strictly* (unknown fields refused): built-in kinds with kubernetes-validate, the
  operator's kinds against the CRD schemas that the dask-kubernetes wheel ships.
* The overlays are rendered by ``kubectl kustomize`` when kubectl is installed, and by a small
  renderer below (which must agree with kubectl) when it is not.
* What the operator and the launcher make from the manifests (the runner pod, the scheduler
  and worker deployments, the scheduled DaskJob, ``make_cluster_spec``) is validated the same way.
* Security: non-root pods, resources everywhere, no literal credentials, ClusterIP Services
  only, least-privilege RBAC, DaskJob names of at most 53 characters.
* The CronJob's launcher runs against a fake Kubernetes API on 127.0.0.1.
"""

from __future__ import annotations

import copy
import datetime as dt
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
dask_kubernetes = pytest.importorskip("dask_kubernetes")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")
BUILDS = ("base", *(f"overlays/{o}" for o in OVERLAYS))
#: The oldest Kubernetes the manifests support (CronJob podFailurePolicy is GA in 1.31) and the newest schema known.
KUBE_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
DASK_GROUP = "kubernetes.dask.org/v1"
MAX_DASKJOB_NAME = 53


# ---------------------------------------------------------------------------- loading
def _docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _launcher():
    spec = importlib.util.spec_from_file_location("daskgen_launcher", BASE / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


launcher = _launcher()


def _manifest_files() -> list[Path]:
    """Every YAML file under deploy/kubernetes that holds Kubernetes objects (not the job
    files, which daskgen reads, nor kustomizations and JSON patches, which kustomize reads)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name == "job.yaml" or path.name.endswith("-patch.yaml"):
            continue
        files.append(path)
    return files


# ---------------------------------------------------------------------------- a small kustomize
def _field_get(node, path: str):
    for part in _field_parts(path):
        node = _field_step(node, part)
    return node


def _field_set(node, path: str, value) -> None:
    parts = _field_parts(path)
    for part in parts[:-1]:
        node = _field_step(node, part)
    node[parts[-1]] = value


def _field_parts(path: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]|[^.\[\]]+", path)


def _field_step(node, part: str):
    m = re.fullmatch(r"\[(\w+)=([^\]]*)\]", part)
    if m:
        (found,) = [item for item in node if str(item.get(m.group(1))) == m.group(2)]
        return found
    return node[part]


def _containers(node) -> Iterator[dict]:
    """Every container, anywhere in a resource (as kustomize's images transformer finds them)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _image_name(image: str) -> str:
    """``registry:5000/team/app:tag@sha256:...`` -> ``registry:5000/team/app``."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render_kustomization(folder: Path) -> list[dict]:
    """Build ``folder`` as kustomize does, for the features deploy/kubernetes uses: resources
    (files and folders), configMapGenerator (files; behavior create/merge/replace),
    generatorOptions, JSON patches with a target, namespace, images and replacements."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions", "patches",
             "namespace", "images", "replacements"}
    assert set(k) <= known, f"{folder}: the test's renderer does not know {set(k) - known}"
    docs: list[dict] = []
    for entry in k.get("resources", []):
        path = folder / entry
        docs += render_kustomization(path) if path.is_dir() else _docs(path)
    options = k.get("generatorOptions", {})
    for gen in k.get("configMapGenerator", []):
        data = {}
        for item in gen.get("files", []):
            key, _, rel = item.partition("=") if "=" in item else (Path(item).name, "", item)
            data[key] = (folder / rel).read_text()
        for item in gen.get("literals", []):
            key, _, value = item.partition("=")
            data[key] = value
        behavior = gen.get("behavior", "create")
        existing = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"]]
        if behavior == "create":
            assert not existing, f"ConfigMap {gen['name']} made twice"
            assert options.get("disableNameSuffixHash"), "the renderer does not hash ConfigMap names"
            meta = {"name": gen["name"]}
            if options.get("labels"):
                meta["labels"] = dict(options["labels"])
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        else:
            (cm,) = existing
            cm["data"] = {**cm["data"], **data} if behavior == "merge" else data
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        hits = 0
        for i, doc in enumerate(docs):
            group, _, version = doc["apiVersion"].rpartition("/")
            if (doc["kind"], doc["metadata"]["name"], group, version) == (
                target["kind"], target["name"], target.get("group", ""), target.get("version", version)
            ):
                docs[i] = launcher.json_patch(doc, ops)
                hits += 1
        assert hits == 1, f"{folder}: patch {patch['path']} matched {hits} resources"
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
            for subject in doc.get("subjects", []) if doc["kind"] in ("RoleBinding", "ClusterRoleBinding") else []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                if _image_name(container.get("image", "")) == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for rep in k.get("replacements", []):
        src = rep["source"]
        (source,) = [d for d in docs if d["kind"] == src["kind"] and d["metadata"]["name"] == src["name"]]
        value = _field_get(source, src["fieldPath"])
        for target in rep["targets"]:
            sel = target["select"]
            for doc in docs:
                if doc["kind"] == sel["kind"] and doc["metadata"]["name"] == sel["name"]:
                    for path in target["fieldPaths"]:
                        _field_set(doc, path, copy.deepcopy(value))
    return docs


def _kubectl_build(folder: Path) -> list[dict] | None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def _key(doc: dict) -> tuple:
    return doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict]]:
    """Each kustomization, built by kubectl when present (checked against the Python
    renderer), else by the Python renderer."""
    out = {}
    for build in BUILDS:
        ours = render_kustomization(K8S / build)
        theirs = _kubectl_build(K8S / build)
        if theirs is not None:
            assert {_key(d): d for d in ours} == {_key(d): d for d in theirs}, f"{build}: renderer and kubectl disagree"
        out[build] = theirs if theirs is not None else ours
    return out


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------- strict validation
def _crd_schemas() -> dict[str, dict]:
    """The openAPIV3Schema of each Dask kind, from the CRDs in the dask-kubernetes wheel."""
    crds = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
    found = {}
    for path in sorted(crds.glob("*.yaml")):
        for crd in _docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                found[f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"] = version["schema"]["openAPIV3Schema"]
    assert {"DaskJob", "DaskCluster", "DaskWorkerGroup", "DaskAutoscaler"} <= {k.rsplit("/", 1)[1] for k in found}, found.keys()
    return found


CRD_SCHEMAS = _crd_schemas()


def _strict(schema):
    """The schema with unknown fields refused: ``additionalProperties: false`` wherever it
    lists ``properties`` and neither allows extra keys nor preserves unknown fields (what a
    structural CRD schema means, and what the API server prunes without a word)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _strict_crd(key: str) -> dict:
    schema = copy.deepcopy(CRD_SCHEMAS[key])
    schema.setdefault("properties", {}).update({
        "apiVersion": {"type": "string", "enum": [key.rsplit("/", 1)[0]]},
        "kind": {"type": "string", "enum": [key.rsplit("/", 1)[1]]},
        "metadata": {"type": "object"},
    })
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return _strict(schema)


STRICT_CRDS = {key: _strict_crd(key) for key in CRD_SCHEMAS}


def _drop_nulls(node, schema):
    """What the API server does first: drop ``null`` where the schema does not say nullable."""
    if isinstance(node, dict):
        props = (schema or {}).get("properties", {})
        extra = (schema or {}).get("additionalProperties")
        out = {}
        for key, value in node.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if value is None and not (sub or {}).get("nullable"):
                continue
            out[key] = _drop_nulls(value, sub)
        return out
    if isinstance(node, list):
        return [_drop_nulls(item, (schema or {}).get("items")) for item in node]
    return node


def _check_metadata(doc: dict) -> None:
    meta = doc["metadata"]
    name = meta["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, f"bad name {name!r}"
    for key, value in (meta.get("labels") or {}).items():
        assert isinstance(value, str) and len(value) <= 63, f"{name}: label {key}={value!r}"


def validate(doc: dict) -> None:
    """Validate one object strictly; raises on an unknown field or a wrong type."""
    _check_metadata(doc)
    key = f"{doc['apiVersion']}/{doc['kind']}"
    if doc["apiVersion"] == DASK_GROUP:
        assert key in STRICT_CRDS, f"no CRD for {key}"
        schema = STRICT_CRDS[key]
        jsonschema.Draft7Validator(schema).validate(_drop_nulls(doc, CRD_SCHEMAS[key]))
        if doc["kind"] == "DaskJob":
            assert len(doc["metadata"]["name"]) <= MAX_DASKJOB_NAME
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# ---------------------------------------------------------------------------- tests: validity
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_strictly_valid(path):
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("build", BUILDS)
def test_every_built_object_is_strictly_valid(builds, build):
    docs = builds[build]
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "ConfigMap", "CronJob", "DaskJob", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    assert kinds == sorted(expected + (["Namespace"] if build != "base" else []))
    for doc in docs:
        validate(doc)
    if build != "base":
        namespace = _one(docs, "Namespace")["metadata"]["name"]
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}


def test_strict_validation_refuses_unknown_fields(builds):
    """The validation above is strict: a misspelt or unknown field anywhere fails it."""
    docs = builds["overlays/prod"]
    job = _one(docs, "DaskJob")
    validate(job)
    for mutate in (
        lambda j: j["spec"]["cluster"]["spec"]["worker"].update(replica=3),  # replicas, misspelt
        lambda j: j["spec"]["job"]["spec"]["containers"][0].update(volumeMount=[]),
        lambda j: j["spec"].update(schedule="0 * * * *"),  # a DaskJob has no schedule
        lambda j: j["spec"]["cluster"]["spec"]["scheduler"]["service"].update(typ="ClusterIP"),
    ):
        bad = copy.deepcopy(job)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
            validate(bad)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["cluster"]["spec"]["worker"]["replicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong_type)
    cron = copy.deepcopy(_one(docs, "CronJob"))
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(cron)
    cron = copy.deepcopy(_one(docs, "CronJob"))
    cron["spec"]["concurrency"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(cron)


def test_the_operator_makes_valid_pods_services_and_deployments_from_the_daskjob(builds):
    """Build what the operator creates from the DaskJob (with its own functions) and validate
    those core objects strictly too: the pod specs inside a DaskJob are only loosely typed."""
    from dask_kubernetes.operator.controller.controller import (
        build_cluster_spec,
        build_job_pod_spec,
        build_scheduler_deployment_spec,
        build_scheduler_service_spec,
        build_worker_deployment_spec,
    )

    for overlay in OVERLAYS:
        job = _one(builds[f"overlays/{overlay}"], "DaskJob")
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        cluster = job["spec"]["cluster"]["spec"]
        labels = {"app.kubernetes.io/name": "daskgen"}
        validate(build_cluster_spec(name, cluster["worker"], cluster["scheduler"], {}, labels))
        pod = build_job_pod_spec(name, name, namespace, job["spec"]["job"]["spec"], {}, labels)
        validate(pod)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"
        validate(build_scheduler_deployment_spec(name, cluster["scheduler"]["spec"], {}, labels))
        service = build_scheduler_service_spec(name, cluster["scheduler"]["service"], {}, labels)
        validate(service)
        assert service["metadata"]["name"] == f"{name}-scheduler" and len(service["metadata"]["name"]) <= 63
        worker = build_worker_deployment_spec(
            f"{name}-default", namespace, name, "0123456789", cluster["worker"]["spec"], {}, labels
        )
        validate(worker)
        container = worker["spec"]["template"]["spec"]["containers"][0]
        defined = {e["name"] for e in container["env"]}
        used = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
        assert used <= defined, f"worker args use undefined variables {used - defined}"


def test_make_cluster_spec_is_valid_for_the_crd():
    from dask_kubernetes.operator import make_cluster_spec

    resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    for env in (None, {"DASKGEN_QUIET": "1"}):
        spec = make_cluster_spec(name="daskgen-adhoc", image="registry.example.com/daskgen:0.1.0", n_workers=3,
                                 resources=resources, env=env)
        validate(spec)
        assert spec["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    bad = make_cluster_spec(name="daskgen-adhoc", image="x")
    bad["spec"]["worker"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        validate(bad)


# ---------------------------------------------------------------------------- tests: security
def _pod_specs(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] == "CronJob":
        return [("launcher", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    if doc["kind"] == "DaskJob":
        cluster = doc["spec"]["cluster"]["spec"]
        return [("job", doc["spec"]["job"]["spec"]), ("scheduler", cluster["scheduler"]["spec"]),
                ("worker", cluster["worker"]["spec"])]
    return []


def _all_built(builds) -> list[dict]:
    return [d for docs in builds.values() for d in docs]


def test_pods_run_as_non_root_with_resources(builds):
    seen = 0
    for doc in _all_built(builds):
        for role, pod in _pod_specs(doc):
            seen += 1
            where = f"{doc['kind']}/{doc['metadata']['name']} {role}"
            ctx = pod["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0 and ctx["runAsGroup"] > 0, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            assert all("hostPath" not in v for v in pod.get("volumes", [])), where
            for c in pod["containers"] + pod.get("initContainers", []):
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
                assert sc.get("runAsUser", 1) != 0, where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {c['name']} {kind}"
                assert _quantity(c["resources"]["requests"]["memory"]) <= _quantity(c["resources"]["limits"]["memory"])
                # a read-only root filesystem: whatever is written goes to a mounted volume
                assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, where
    assert seen == 4 * len(BUILDS)


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    return float(m.group(1)) * units.get(m.group(2), 1)


SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def _strings(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def test_no_credentials_in_manifests(builds):
    files = [p for p in K8S.rglob("*") if p.is_file()]
    for path in files:
        text = path.read_text(errors="replace")
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path}: looks like an AWS access key"
        assert not re.search(r"aws_secret_access_key\s*[=:]\s*\S", text, re.I), path
    for doc in _all_built(builds):
        assert doc["kind"] != "Secret", "a Secret in the manifests: create it out of band (see the README)"
        for _, pod in _pod_specs(doc):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    if SECRETISH.search(env["name"]):
                        assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                            f"{c['name']}: {env['name']} must come from a Secret"
                        )
        if doc["kind"] == "ConfigMap":
            for text in doc["data"].values():
                assert not re.search(r"(secret|access)_?key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text, re.I)


def test_object_store_credentials_come_from_a_secret(builds):
    for overlay in BUILDS:
        job = _one(builds[overlay], "DaskJob")
        pods = dict(_pod_specs(job))
        for role in ("job", "worker"):  # they read and write data
            refs = [e["secretRef"]["name"] for e in pods[role]["containers"][0].get("envFrom", [])]
            assert refs == ["daskgen-object-store"], role
        assert "envFrom" not in pods["scheduler"]["containers"][0], "the scheduler needs no credentials"
        launcher_pod = _pod_specs(_one(builds[overlay], "CronJob"))[0][1]
        assert "envFrom" not in launcher_pod["containers"][0]


def test_services_are_cluster_ip_only(builds):
    for doc in _all_built(builds):
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
        for text in _strings(doc):
            assert text not in ("LoadBalancer", "NodePort"), f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "DaskJob":
            service = doc["spec"]["cluster"]["spec"]["scheduler"]["service"]
            assert service["type"] == "ClusterIP"
            assert service["selector"] == {"dask.org/cluster-name": doc["metadata"]["name"], "dask.org/component": "scheduler"}
            assert {p["port"] for p in service["ports"]} == {8786, 8787}


def test_rbac_allows_exactly_what_the_launcher_does(builds):
    for build in BUILDS:
        docs = builds[build]
        role = _one(docs, "Role", "daskgen-launcher")
        assert role["rules"] == [{"apiGroups": ["kubernetes.dask.org"], "resources": ["daskjobs"],
                                  "verbs": ["create", "get", "list", "delete"]}]
        binding = _one(docs, "RoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "daskgen-launcher"}
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["name"] == "daskgen-launcher"
        cron = _pod_specs(_one(docs, "CronJob"))[0][1]
        assert cron["serviceAccountName"] == "daskgen-launcher"
        runner = _one(docs, "ServiceAccount", "daskgen-runner")
        assert runner["automountServiceAccountToken"] is False
        for _, pod in _pod_specs(_one(docs, "DaskJob")):
            assert pod["serviceAccountName"] == "daskgen-runner" and pod["automountServiceAccountToken"] is False
        assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    # the verbs are the API calls the launcher makes
    source = (BASE / "launcher.py").read_text()
    for method in ("POST", "GET", "DELETE"):
        assert f'"{method}"' in source


def test_the_schedule(builds):
    expected = {"base": "30 2 * * *", "overlays/dev": "0 */6 * * *", "overlays/prod": "30 2 * * *"}
    for build in BUILDS:
        cron = _one(builds[build], "CronJob")
        spec = cron["spec"]
        assert spec["schedule"] == expected[build]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        # the launcher gives up (and deletes its DaskJob) before Kubernetes kills it
        assert float(env["DASKJOB_TIMEOUT"]) < job["activeDeadlineSeconds"]
        assert container["command"] == ["python", "/launcher/launcher.py"]
        # the launcher's files are the keys of the ConfigMap it mounts
        (volume,) = [v for v in pod["volumes"] if v["name"] == "launcher"]
        files = _one(builds[build], "ConfigMap", volume["configMap"]["name"])["data"]
        assert Path(env["DASKJOB_TEMPLATE"]).name in files and "launcher.py" in files
        assert files["launcher.py"] == (BASE / "launcher.py").read_text()
        assert files["daskjob.yaml"] == (BASE / "daskjob.yaml").read_text()
        if build != "base":
            assert files["daskjob-patch.yaml"] == (K8S / build / "daskjob-patch.yaml").read_text()
            # one `images:` entry sets the launcher's image and the image of the runs it creates
            assert env["DASKGEN_IMAGE"] == container["image"] == _one(builds[build], "DaskJob")["spec"]["job"]["spec"]["containers"][0]["image"]
        assert _one(builds[build], "DaskJob")["spec"]["job"]["spec"]["restartPolicy"] == "Never"


def test_overlays_size_the_runs(builds):
    def worker(build):
        return _one(builds[build], "DaskJob")["spec"]["cluster"]["spec"]["worker"]

    assert worker("overlays/dev")["replicas"] < worker("base")["replicas"] < worker("overlays/prod")["replicas"]
    mem = {b: _quantity(worker(b)["spec"]["containers"][0]["resources"]["limits"]["memory"]) for b in BUILDS}
    assert mem["overlays/dev"] < mem["base"] < mem["overlays/prod"]
    # the patches changed only what they name: the worker still runs `dask worker` in the image
    for build in BUILDS:
        container = worker(build)["spec"]["containers"][0]
        assert container["command"] == ["dask"] and container["args"][0] == "worker"
        assert container["image"] == _one(builds[build], "DaskJob")["spec"]["job"]["spec"]["containers"][0]["image"]


def test_job_files_are_valid_daskgen_jobs():
    """The job files the DaskJob runs are valid for `daskgen run` (key names and types)."""
    job_module = pytest.importorskip("daskgen.job", reason="daskgen run is not available")

    for path in sorted(K8S.rglob("job.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert str(raw["out"]).startswith("s3://"), "a cluster job writes to object storage"
        assert all(str(p).startswith("s3://") for p in ([raw["inputs"]] if isinstance(raw["inputs"], str) else raw["inputs"]))
        job = job_module.load_job(str(path))
        assert job.out == raw["out"]


# ---------------------------------------------------------------------------- tests: the launcher's DaskJob
def test_unique_names_fit_the_operator():
    now = dt.datetime(2026, 11, 25, 2, 30, tzinfo=dt.UTC)
    assert launcher.unique_name("daskgen", now, "ab12") == "daskgen-20261125-023000-ab12"
    long = launcher.unique_name("A_very_LONG prefix " * 5, now, "ff00")
    assert len(long) <= MAX_DASKJOB_NAME and long.endswith("-20261125-023000-ff00")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long)
    assert len(launcher.unique_name("x" * 100, now, "0000")) == MAX_DASKJOB_NAME


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduled_runs_equal_the_one_off_job(builds, overlay):
    """The launcher makes from the template and the overlay's patch exactly the DaskJob that
    kustomize makes for the one-off run, but for its name and labels; and it is valid."""
    docs = builds[f"overlays/{overlay}"]
    one_off = _one(docs, "DaskJob")
    files = _one(docs, "ConfigMap", "daskgen-launcher")["data"]
    env = {e["name"]: e.get("value") for e in _pod_specs(_one(docs, "CronJob"))[0][1]["containers"][0]["env"]}
    name = launcher.unique_name("daskgen", dt.datetime.now(dt.UTC), "beef")
    deadline = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    made = launcher.render(
        yaml.safe_load(files["daskjob.yaml"]), yaml.safe_load(files["daskjob-patch.yaml"]), name=name,
        namespace=one_off["metadata"]["namespace"], schedule=env["DASKGEN_SCHEDULE"], image=env["DASKGEN_IMAGE"],
        deadline=deadline,
    )
    validate(made)
    assert made["metadata"]["name"] == name and made["metadata"]["namespace"] == one_off["metadata"]["namespace"]
    labels = made["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "daskgen-launcher"
    assert labels[launcher.SCHEDULE_LABEL] == env["DASKGEN_SCHEDULE"]
    assert made["metadata"]["annotations"][launcher.DEADLINE_ANNOTATION] == "2030-01-01T00:00:00Z"
    assert made["spec"]["cluster"]["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    same = copy.deepcopy(made["spec"])
    same["cluster"]["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] = one_off["metadata"]["name"]
    assert same == one_off["spec"]


def test_json_patch_matches_rfc_6902():
    doc = {"a": {"b": [1, 2, 3], "c": "x"}}
    ops = [
        {"op": "test", "path": "/a/c", "value": "x"},
        {"op": "add", "path": "/a/b/-", "value": 4},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "remove", "path": "/a/b/1"},
        {"op": "replace", "path": "/a/c", "value": {"d~e/f": 1}},
        {"op": "add", "path": "/a/c/d~0e~1f", "value": 2},
    ]
    assert launcher.json_patch(doc, ops) == {"a": {"b": [0, 2, 3, 4], "c": {"d~e/f": 2}}}
    assert doc == {"a": {"b": [1, 2, 3], "c": "x"}}, "the input was changed"
    for bad in (
        [{"op": "test", "path": "/a/c", "value": "y"}],
        [{"op": "replace", "path": "/a/zz", "value": 1}],
        [{"op": "remove", "path": "/a/b/9"}],
        [{"op": "move", "from": "/a", "path": "/b"}],
        [{"op": "add", "path": "/a/b/0"}],
    ):
        with pytest.raises(launcher.BadSettings):
            launcher.json_patch(doc, bad)


def test_render_refuses_a_bad_template():
    template = yaml.safe_load((BASE / "daskjob.yaml").read_text())
    kw = {"name": "daskgen-x", "namespace": "ns", "schedule": "daskgen"}
    with pytest.raises(launcher.BadSettings, match="not a kubernetes.dask.org/v1 DaskJob"):
        launcher.render({**template, "kind": "DaskCluster"}, None, **kw)
    with pytest.raises(launcher.BadSettings, match="test"):
        launcher.render(template, [{"op": "test", "path": "/spec/job/spec/containers/0/name", "value": "nope"}], **kw)
    no_job = copy.deepcopy(template)
    no_job["spec"]["job"]["spec"]["containers"] = []
    with pytest.raises(launcher.BadSettings, match="no job containers"):
        launcher.render(no_job, None, **kw)


# ---------------------------------------------------------------------------- the launcher against a fake API
class FakeKube:
    """The DaskJob endpoints of a Kubernetes API server, on 127.0.0.1. Created DaskJobs are
    validated strictly; each GET of a DaskJob moves it one step through ``script``."""

    def __init__(self, script=("JobCreated", "ClusterCreated", "Running", "Successful")):
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.script = list(script)
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def add(self, name, status, schedule="daskgen", created="2026-01-01T00:00:00Z", deadline=None, managed=True):
        labels = {launcher.SCHEDULE_LABEL: schedule}
        if managed:
            labels["app.kubernetes.io/managed-by"] = launcher.MANAGED_BY
        meta = {"name": name, "namespace": "ns", "labels": labels, "creationTimestamp": created}
        if deadline:
            meta["annotations"] = {launcher.DEADLINE_ANNOTATION: deadline}
        self.jobs[name] = {"apiVersion": DASK_GROUP, "kind": "DaskJob", "metadata": meta,
                           "status": {"jobStatus": status} if status else {}}

    def handle(self, req, method):
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(req.path)
        m = re.fullmatch(r"/apis/kubernetes\.dask\.org/v1/namespaces/([^/]+)/daskjobs(?:/([^/]+))?", parts.path)
        body = req._body()
        with self.lock:
            self.calls.append((method, parts.path))
            if not m:
                return req._send(404, {"message": "not found"})
            name = m.group(2)
            if method == "POST" and not name:
                try:
                    validate(body)
                except Exception as exc:  # what the API server would refuse
                    return req._send(422, {"message": str(exc).splitlines()[0]})
                if body["metadata"]["name"] in self.jobs:
                    return req._send(409, {"message": "already exists"})
                body["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
                self.jobs[body["metadata"]["name"]] = body
                return req._send(201, body)
            if method == "GET" and not name:
                selector = parse_qs(parts.query).get("labelSelector", [""])[0]
                want = dict(p.split("=", 1) for p in selector.split(",") if p)
                items = [j for j in self.jobs.values()
                         if all(j["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
                return req._send(200, {"items": items})
            if name not in self.jobs:
                return req._send(404, {"message": f"daskjobs {name} not found"})
            job = self.jobs[name]
            if method == "DELETE":
                del self.jobs[name]
                return req._send(200, {"status": "Success"})
            status = job.setdefault("status", {})
            if "jobStatus" not in status or status["jobStatus"] in self.script[:-1]:
                steps = self.script
                now = status.get("jobStatus")
                status["jobStatus"] = steps[0] if now is None else steps[steps.index(now) + 1]
            return req._send(200, job)


def _launcher_env(tmp_path, **extra) -> dict[str, str]:
    env = {
        "DASKJOB_TEMPLATE": str(BASE / "daskjob.yaml"),
        "DASKJOB_PATCH": str(K8S / "overlays" / "prod" / "daskjob-patch.yaml"),
        "DASKGEN_IMAGE": "registry.example.com/daskgen:0.1.0",
        "DASKGEN_SCHEDULE": "daskgen",
        "NAMESPACE": "ns",
        "DASKJOB_KEEP": "2",
        "DASKJOB_TIMEOUT": "30",
        "DASKJOB_POLL": "0.01",
    }
    env.update(extra)
    return env


def test_launcher_creates_a_daskjob_and_follows_it_to_success(tmp_path, capsys):
    with FakeKube() as kube:
        kube.add("daskgen-20260101-000000-aaaa", "Successful", created="2026-01-01T00:00:00Z")
        kube.add("daskgen-20260102-000000-bbbb", "Failed", created="2026-01-02T00:00:00Z")
        kube.add("daskgen-20260103-000000-cccc", "Successful", created="2026-01-03T00:00:00Z")
        kube.add("other-schedule-run", "Successful", schedule="other")
        kube.add("made-by-hand", "Successful", managed=False)
        kube.add("daskgen-20250101-000000-dead", "Running", deadline="2025-01-01T06:00:00Z")
        before = set(kube.jobs)
        code = launcher.run(_launcher_env(tmp_path), api=launcher.Api(kube.url, None, None))
        after = set(kube.jobs)
        (made,) = after - before
        created = kube.jobs[made]
    log = capsys.readouterr().out
    assert code == 0, log
    assert re.fullmatch(r"daskgen-\d{8}-\d{6}-[0-9a-f]{4}", made) and len(made) <= MAX_DASKJOB_NAME
    assert {c["image"] for _, pod in _pod_specs(created) for c in pod["containers"]} == {"registry.example.com/daskgen:0.1.0"}
    assert created["spec"]["cluster"]["spec"]["worker"]["replicas"] == 8  # the prod patch
    # keep 2 finished runs of this schedule (the new one and the newest before it); leave the
    # other schedule's run and the DaskJob made by hand alone; the stale unfinished run is gone
    assert after == {made, "daskgen-20260103-000000-cccc", "other-schedule-run", "made-by-hand"}
    assert f"DaskJob {made}: Running" in log and f"DaskJob {made}: Successful" in log
    assert f"kubectl port-forward -n ns svc/{made}-scheduler 8787:8787" in log


def test_launcher_reports_a_failed_run(tmp_path, capsys):
    with FakeKube(script=("JobCreated", "Running", "Failed")) as kube:
        code = launcher.run(_launcher_env(tmp_path), api=launcher.Api(kube.url, None, None))
        (job,) = kube.jobs.values()
    assert code == 1
    log = capsys.readouterr().out
    assert f"kubectl logs -n ns {job['metadata']['name']}-runner" in log


def test_launcher_times_out_and_deletes_its_daskjob(tmp_path, capsys):
    with FakeKube(script=("JobCreated", "Running", "Running")) as kube:  # never ends
        code = launcher.run(_launcher_env(tmp_path, DASKJOB_TIMEOUT="0.3"), api=launcher.Api(kube.url, None, None))
        assert code == 1
        assert kube.jobs == {}
    assert "did not end within" in capsys.readouterr().out


def test_launcher_does_not_start_over_a_run_in_progress(tmp_path, capsys):
    with FakeKube() as kube:
        kube.add("daskgen-20260101-000000-aaaa", "Running", deadline="2999-01-01T00:00:00Z")
        code = launcher.run(_launcher_env(tmp_path), api=launcher.Api(kube.url, None, None))
        assert code == 1 and list(kube.jobs) == ["daskgen-20260101-000000-aaaa"]
        assert not [c for c in kube.calls if c[0] == "POST"]
    assert "still in progress" in capsys.readouterr().out


def test_launcher_exits_2_on_bad_settings_without_creating_anything(tmp_path, capsys):
    bad_patch = tmp_path / "patch.yaml"
    bad_patch.write_text(yaml.safe_dump([{"op": "test", "path": "/spec/job/spec/containers/0/name", "value": "x"}]))
    with FakeKube() as kube:
        api = launcher.Api(kube.url, None, None)
        assert launcher.run(_launcher_env(tmp_path, DASKJOB_PATCH=str(bad_patch)), api=api) == 2
        assert launcher.run(_launcher_env(tmp_path, DASKJOB_TEMPLATE=str(tmp_path / "missing.yaml")), api=api) == 2
        assert launcher.run(_launcher_env(tmp_path, DASKJOB_KEEP="many"), api=api) == 2
        assert launcher.run(_launcher_env(tmp_path, DASKGEN_SCHEDULE="Not A Label"), api=api) == 2
        assert kube.calls == []


def test_launcher_deletes_its_daskjob_when_stopped(tmp_path):
    """The real entry point, as the CronJob runs it: SIGTERM (deadline, or the Job deleted)
    deletes the DaskJob, so that its Dask cluster does not outlive the run."""
    with FakeKube(script=("JobCreated", "Running", "Running")) as kube:  # never ends
        env = {**os.environ, **_launcher_env(tmp_path, DASKJOB_POLL="0.05"), "DASKGEN_KUBE_API": kube.url}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        proc = subprocess.Popen([sys.executable, str(BASE / "launcher.py")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                (j.get("status") or {}).get("jobStatus") == "Running" for j in list(kube.jobs.values())
            ):
                time.sleep(0.05)
            assert kube.jobs, "the launcher created no DaskJob"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1, out
        assert kube.jobs == {}, out
        assert "deleting DaskJob" in out


# ---------------------------------------------------------------------------- the image
def test_dockerfile():
    text = (K8S / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base), base
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms and all(line.split()[1] == "${PYTHON_IMAGE}" for line in froms)
    user = [line for line in lines if line.startswith("USER ")][-1].split()[1]
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), "the image runs as a numeric non-root user"
    uid = int(user.split(":")[0])
    assert any("pip install" in line and "[${EXTRAS}]" in line for line in lines)
    assert re.search(r"^ARG EXTRAS=deploy$", text, re.M)
    assert 'ENTRYPOINT ["daskgen"]' in lines
    assert "COPY deploy/dask.yaml /etc/dask/dask.yaml" in lines
    for line in lines:  # every file the build copies exists in the repository
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    ignore = [line for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*", "the build context holds only what the image needs"
    # the pods run as the image's user
    for path in (BASE / "daskjob.yaml", BASE / "cronjob.yaml"):
        for doc in _docs(path):
            for _, pod in _pod_specs(doc):
                assert pod["securityContext"]["runAsUser"] == uid
