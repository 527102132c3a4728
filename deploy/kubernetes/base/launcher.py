"""Launch one scheduled daskgen run: create a uniquely named DaskJob and follow it to its end.

Runs in the CronJob's pod, in the daskgen image (Python's standard library and PyYAML only).
It reads the DaskJob template, applies the overlay's JSON patch (the very file kustomize
applies to the one-off DaskJob) and the image, names the DaskJob
``PREFIX-YYYYMMDD-HHMMSS-xxxx`` (at most 53 characters: the operator derives the Service
``NAME-scheduler`` from it), creates it, and polls its ``status.jobStatus`` until the operator
reports ``Successful`` or ``Failed``. It deletes the finished DaskJobs of its schedule beyond
the newest ``DASKJOB_KEEP``, and its own DaskJob when it is stopped (SIGTERM) or times out,
so that no Dask cluster outlives its run.

Settings (environment):
  DASKJOB_TEMPLATE  the DaskJob template (YAML)               [/launcher/daskjob.yaml]
  DASKJOB_PATCH     a JSON patch (RFC 6902) for it, if present [/launcher/daskjob-patch.yaml]
  DASKGEN_IMAGE     image of every container of the DaskJob    [the template's]
  DASKGEN_SCHEDULE  the schedule's name, a label of its runs   [daskgen]
  DASKJOB_PREFIX    name prefix of the DaskJobs                [the template's name]
  NAMESPACE         where to create it                        [the service account's]
  DASKJOB_KEEP      finished runs of the schedule to keep      [5]
  DASKJOB_TIMEOUT   seconds to wait for the run                [21000]
  DASKJOB_POLL      seconds between status checks              [15]

Exit codes: 0 the run succeeded; 1 it failed, timed out, was stopped, or the API refused;
2 bad template or settings (nothing was created).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import secrets
import signal
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import yaml

GROUP, VERSION, PLURAL = "kubernetes.dask.org", "v1", "daskjobs"
MAX_NAME = 53
MANAGED_BY = "daskgen-launcher"
SCHEDULE_LABEL = "daskgen.dask.org/schedule"
DEADLINE_ANNOTATION = "daskgen.dask.org/deadline"
FINISHED = ("Successful", "Failed")
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class BadSettings(Exception):
    """The template or the settings are wrong: nothing can be created (exit 2)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def log(text: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} launcher: {text}", flush=True)


# ---------------------------------------------------------------------------- the manifest
def json_patch(doc: Any, ops: list) -> Any:
    """``doc`` with the RFC 6902 operations ``ops`` applied (add, remove, replace, test), as
    kustomize applies an overlay's JSON patch to the one-off DaskJob."""
    doc = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test") or "path" not in op:
            raise BadSettings(f"patch operation {i}: expected add, remove, replace or test with a path, got {op!r}")
        kind, path = op["op"], op["path"]
        if kind != "remove" and "value" not in op:
            raise BadSettings(f"patch operation {i} ({kind} {path}): no value")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]] if path else []
        if not parts:
            if kind == "test" and doc != op["value"]:
                raise BadSettings(f"patch operation {i}: test of the whole document failed")
            doc = copy.deepcopy(op.get("value"))
            continue
        parent = doc
        for part in parts[:-1]:
            parent = _step(parent, part, i, path)
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if (last == "-" and kind == "add") else _index(parent, last, i, path, kind == "add")
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif parent[index] != op["value"]:
                raise BadSettings(f"patch operation {i}: test {path} == {op['value']!r} failed (it is {parent[index]!r})")
        elif isinstance(parent, dict):
            if kind in ("remove", "replace", "test") and last not in parent:
                raise BadSettings(f"patch operation {i} ({kind} {path}): no such path")
            if kind == "remove":
                del parent[last]
            elif kind == "test":
                if parent[last] != op["value"]:
                    raise BadSettings(f"patch operation {i}: test {path} == {op['value']!r} failed (it is {parent[last]!r})")
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise BadSettings(f"patch operation {i} ({kind} {path}): no such path")
    return doc


def _step(node: Any, part: str, i: int, path: str) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list):
        return node[_index(node, part, i, path, False)]
    raise BadSettings(f"patch operation {i}: no such path {path}")


def _index(items: list, part: str, i: int, path: str, adding: bool) -> int:
    if not part.isdigit() or int(part) > len(items) - (0 if adding else 1):
        raise BadSettings(f"patch operation {i}: no such path {path}")
    return int(part)


def unique_name(prefix: str, now: dt.datetime, token: str) -> str:
    """``PREFIX-YYYYMMDD-HHMMSS-TOKEN``, a DNS label of at most 53 characters."""
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%d-%H%M%S")
    tail = f"-{stamp}-{token}"
    head = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[: MAX_NAME - len(tail)].rstrip("-")
    name = (head or "daskgen") + tail
    if len(name) > MAX_NAME or not _DNS_LABEL.match(name):  # pragma: no cover - by construction
        raise BadSettings(f"cannot make a DaskJob name from prefix {prefix!r}")
    return name


def _pod_specs(job: dict) -> list[dict]:
    spec = job.get("spec", {})
    cluster = spec.get("cluster", {}).get("spec", {})
    return [
        spec.get("job", {}).get("spec", {}),
        cluster.get("scheduler", {}).get("spec", {}),
        cluster.get("worker", {}).get("spec", {}),
    ]


def render(
    template: Mapping,
    patch: list | None,
    *,
    name: str,
    namespace: str,
    schedule: str,
    image: str | None = None,
    deadline: dt.datetime | None = None,
) -> dict:
    """The DaskJob to create: the template with the patch, named, labelled and imaged."""
    if template.get("apiVersion") != f"{GROUP}/{VERSION}" or template.get("kind") != "DaskJob":
        raise BadSettings(f"the template is not a {GROUP}/{VERSION} DaskJob")
    job = json_patch(dict(template), patch) if patch else copy.deepcopy(dict(template))
    if not isinstance(job, dict) or job.get("kind") != "DaskJob":
        raise BadSettings("the patch made the template something else than a DaskJob")
    job.pop("status", None)
    old = job.get("metadata") or {}
    labels = dict(old.get("labels") or {})
    labels.update({
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": name,
        SCHEDULE_LABEL: schedule,
    })
    annotations = dict(old.get("annotations") or {})
    if deadline is not None:
        annotations[DEADLINE_ANNOTATION] = deadline.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    job["metadata"] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        job["metadata"]["annotations"] = annotations
    specs = _pod_specs(job)
    if not specs[0].get("containers"):
        raise BadSettings("the template has no job containers (spec.job.spec.containers)")
    if not specs[1].get("containers") or not specs[2].get("containers"):
        raise BadSettings("the template has no scheduler or worker containers")
    if image:
        for pod in specs:
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                container["image"] = image
    # The scheduler's Service selects the pods of this cluster, whose name is the DaskJob's.
    service = job["spec"]["cluster"]["spec"]["scheduler"].get("service")
    if service is not None:
        service.setdefault("selector", {})["dask.org/cluster-name"] = name
    return job


# ---------------------------------------------------------------------------- the API
class Api:
    """The few calls the launcher makes, over HTTPS with the pod's service account."""

    def __init__(self, base: str, token_file: str | None, ca_file: str | None, timeout: float = 30):
        self.base = base.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self.context = None
        if self.base.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file if ca_file and os.path.exists(ca_file) else None)

    @classmethod
    def in_cluster(cls, env: Mapping[str, str]) -> Api:
        base = env.get("DASKGEN_KUBE_API")
        if not base:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise BadSettings("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST) and no DASKGEN_KUBE_API")
            base = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token = env.get("DASKGEN_KUBE_TOKEN_FILE", f"{SERVICE_ACCOUNT}/token")
        return cls(base, token, f"{SERVICE_ACCOUNT}/ca.crt")

    def _path(self, namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{urllib.parse.quote(namespace)}/{PLURAL}"
        return path + (f"/{urllib.parse.quote(name)}" if name else "")

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token_file and os.path.exists(self.token_file):
            with open(self.token_file) as f:  # re-read: projected tokens are rotated
                req.add_header("Authorization", f"Bearer {f.read().strip()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except ValueError:
                pass
            raise ApiError(exc.code, " ".join(str(detail).split())[:500]) from None
        return json.loads(text) if text else None

    def create(self, job: dict) -> dict:
        return self.request("POST", self._path(job["metadata"]["namespace"]), job)

    def get(self, namespace: str, name: str) -> dict:
        return self.request("GET", self._path(namespace, name))

    def list(self, namespace: str, selector: str) -> list[dict]:
        return self.request("GET", self._path(namespace), query={"labelSelector": selector}).get("items", [])

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", self._path(namespace, name), {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status != 404:
                raise


# ---------------------------------------------------------------------------- the run
def _status(job: Mapping) -> str:
    return (job.get("status") or {}).get("jobStatus") or "Pending"


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def tidy(api: Api, namespace: str, schedule: str, keep: int, now: dt.datetime) -> list[str]:
    """Delete the schedule's finished runs beyond the newest ``keep``, and unfinished runs
    whose deadline has passed (left by a launcher that was killed). Returns the runs still
    in progress. Never touches a DaskJob that this schedule's launcher did not create."""
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY},{SCHEDULE_LABEL}={schedule}"
    runs = sorted(api.list(namespace, selector), key=lambda j: j["metadata"].get("creationTimestamp", ""))
    finished = [j for j in runs if _status(j) in FINISHED]
    running = []
    for job in runs:
        name = job["metadata"]["name"]
        deadline = _parse_time((job["metadata"].get("annotations") or {}).get(DEADLINE_ANNOTATION))
        if _status(job) not in FINISHED and deadline is not None and deadline < now:
            log(f"deleting {name}: unfinished ({_status(job)}) past its deadline")
            api.delete(namespace, name)
        elif _status(job) not in FINISHED:
            running.append(name)
    for job in finished[: max(len(finished) - keep, 0)]:
        log(f"deleting {job['metadata']['name']} ({_status(job)}): beyond the {keep} runs kept")
        api.delete(namespace, job["metadata"]["name"])
    return running


def _settings(env: Mapping[str, str]) -> dict[str, Any]:
    def number(key: str, default: str, kind=int):
        try:
            value = kind(env.get(key) or default)
        except ValueError:
            raise BadSettings(f"{key} must be a number, got {env.get(key)!r}") from None
        if value < 0:
            raise BadSettings(f"{key} must not be negative, got {value}")
        return value

    template_path = env.get("DASKJOB_TEMPLATE") or "/launcher/daskjob.yaml"
    patch_path = env.get("DASKJOB_PATCH") or "/launcher/daskjob-patch.yaml"
    try:
        with open(template_path) as f:
            template = yaml.safe_load(f)
        patch = None
        if os.path.exists(patch_path):
            with open(patch_path) as f:
                patch = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise BadSettings(f"cannot read the template: {' '.join(str(exc).split())}") from None
    if not isinstance(template, dict):
        raise BadSettings(f"{template_path}: the template must be a YAML mapping")
    if not isinstance(patch, (list, type(None))):
        raise BadSettings(f"{patch_path}: the patch must be a list of JSON patch operations")
    namespace = env.get("NAMESPACE")
    if not namespace:
        try:
            with open(f"{SERVICE_ACCOUNT}/namespace") as f:
                namespace = f.read().strip()
        except OSError:
            raise BadSettings("NAMESPACE is not set and there is no service account namespace") from None
    schedule = env.get("DASKGEN_SCHEDULE") or "daskgen"
    if not _DNS_LABEL.match(schedule) or len(schedule) > 63:
        raise BadSettings(f"DASKGEN_SCHEDULE must be a DNS label (a label value), got {schedule!r}")
    return {
        "template": template,
        "patch": patch,
        "namespace": namespace,
        "schedule": schedule,
        "prefix": env.get("DASKJOB_PREFIX") or (template.get("metadata") or {}).get("name") or "daskgen",
        "image": env.get("DASKGEN_IMAGE") or None,
        "keep": number("DASKJOB_KEEP", "5"),
        "timeout": number("DASKJOB_TIMEOUT", "21000", float),
        "poll": number("DASKJOB_POLL", "15", float),
    }


def run(env: Mapping[str, str], api: Api | None = None) -> int:
    try:
        s = _settings(env)
        api = api or Api.in_cluster(env)
        now = dt.datetime.now(dt.UTC)
        deadline = now + dt.timedelta(seconds=s["timeout"])
        # validate before touching the cluster (a bad template fails with exit 2)
        render(s["template"], s["patch"], name=unique_name(s["prefix"], now, "0000"),
               namespace=s["namespace"], schedule=s["schedule"], image=s["image"])
    except BadSettings as exc:
        log(f"error: {exc}")
        return 2

    try:
        running = tidy(api, s["namespace"], s["schedule"], s["keep"], now)
        if running:
            log(f"error: an earlier run of schedule {s['schedule']} is still in progress: {', '.join(running)}; "
                "not starting another (delete it, or wait for it to end)")
            return 1
        created = None
        for _ in range(3):
            name = unique_name(s["prefix"], dt.datetime.now(dt.UTC), secrets.token_hex(2))
            job = render(s["template"], s["patch"], name=name, namespace=s["namespace"],
                         schedule=s["schedule"], image=s["image"], deadline=deadline)
            try:
                created = api.create(job)
                break
            except ApiError as exc:
                if exc.status != 409:  # 409: the name is taken; draw another
                    raise
        if created is None:
            log("error: could not find a free DaskJob name")
            return 1
    except (ApiError, OSError) as exc:
        log(f"error: the Kubernetes API refused: {exc}")
        return 1

    namespace = s["namespace"]
    log(f"created DaskJob {name} in {namespace}")
    log(f"dashboard: kubectl port-forward -n {namespace} svc/{name}-scheduler 8787:8787, then http://localhost:8787")

    def stop(signum, frame):
        log(f"stopped (signal {signum}): deleting DaskJob {name} and its cluster")
        try:
            api.delete(namespace, name)
        except (ApiError, OSError) as exc:
            log(f"error: could not delete {name}: {exc}")
        sys.exit(1)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _follow(api, namespace, name, s, deadline)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _follow(api: Api, namespace: str, name: str, s: dict, deadline: dt.datetime) -> int:
    status, errors = None, 0
    while True:
        try:
            job = api.get(namespace, name)
            errors = 0
        except ApiError as exc:
            if exc.status == 404:
                log(f"error: DaskJob {name} was deleted before it ended")
                return 1
            job, errors = None, errors + 1
        except OSError as exc:  # the API server restarting: keep trying for a while
            log(f"warning: cannot reach the API: {exc}")
            job, errors = None, errors + 1
        if errors > 20:
            log("error: the Kubernetes API keeps failing; giving up")
            return 1
        if job is not None and _status(job) != status:
            status = _status(job)
            log(f"DaskJob {name}: {status}")
            if status in FINISHED:
                try:
                    tidy(api, namespace, s["schedule"], s["keep"], dt.datetime.now(dt.UTC))
                except (ApiError, OSError) as exc:
                    log(f"warning: could not delete old runs: {exc}")
                if status == "Failed":
                    log(f"the run failed: kubectl logs -n {namespace} {name}-runner")
                return 0 if status == "Successful" else 1
        if dt.datetime.now(dt.UTC) >= deadline:
            log(f"error: DaskJob {name} did not end within {s['timeout']:.0f}s; deleting it")
            try:
                api.delete(namespace, name)
            except (ApiError, OSError) as exc:
                log(f"error: could not delete {name}: {exc}")
            return 1
        time.sleep(s["poll"])


if __name__ == "__main__":
    sys.exit(run(os.environ))
