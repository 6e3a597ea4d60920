"""cluster.yaml and the Kubernetes manifests: valid for the tools that read them, and saying what we mean."""

import re
import shlex

import pytest
import ray
import yaml

from ray_sentiment.cli import build_parser
from ray_sentiment.settings import ServeSettings

from conftest import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# -- cluster.yaml: what `ray up` does to it before launching anything --------------------------------


@pytest.fixture(scope="module")
def cluster():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))  # defaults filled as `ray up` does
    validate_config(config)  # Ray's autoscaler schema (ray-schema.json) and its own checks
    return config


def test_cluster_has_a_cpu_head_and_autoscaling_gpu_and_cpu_workers(cluster):
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    gpu = types["gpu"]
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"
    assert (gpu["min_workers"], gpu["max_workers"], gpu["resources"]) == (0, 4, {"GPU": 1})
    cpu = types["cpu"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 1 and "GPU" not in cpu["resources"]
    assert cluster["max_workers"] >= gpu["max_workers"] + cpu["max_workers"]
    assert 1 <= cluster["idle_timeout_minutes"] <= 30
    assert cluster["provider"]["cache_stopped_nodes"] is False  # idle nodes terminated, not left billing disks


def test_cluster_installs_this_package_and_the_same_ray_on_every_node(cluster):
    assert cluster["file_mounts"]["~/ray-sentiment"] == "."
    for commands in (cluster["head_setup_commands"], cluster["worker_setup_commands"]):
        text = "\n".join(commands)
        assert f'=={ray.__version__}"' in text  # the same Ray as the laptop that submits jobs
        assert "pip install -q -e ~/ray-sentiment" in text


def test_cluster_requires_a_token_and_keeps_the_dashboard_on_the_head(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(cluster["worker_start_ray_commands"])
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# -- deploy/k8s: KubeRay custom resources ------------------------------------------------------------


def _manifests(name: str) -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()))


def _manifest(name: str) -> dict:
    """The file's Ray resource (a RayJob or RayService); service.yaml also holds a Service."""
    return _manifests(name)[0]


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"]


def _check_pod_template(template: dict, where: str) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert DNS_LABEL.match(c["name"]) and c["image"], f"{where}: a container needs a name and an image"
        assert c["resources"]["limits"] == c["resources"]["requests"], f"{where}: guaranteed QoS"
    return containers


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_has_the_fields_kuberay_requires(path):
    manifest = _manifest(path.name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayJob", "RayService")
    assert DNS_LABEL.match(manifest["metadata"]["name"])
    spec = _cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__  # the image's Ray (deploy/Dockerfile)
    assert spec["authOptions"] == {"mode": "token"}
    images = {c["image"] for c in _check_pod_template(spec["headGroupSpec"]["template"], "head")}
    assert isinstance(spec["headGroupSpec"].get("rayStartParams", {}), dict)
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        assert DNS_LABEL.match(group["groupName"]) and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = _check_pod_template(group["template"], group["groupName"])
        images |= {c["image"] for c in containers}
        gpu_groups += any(c["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1 for c in containers)
    assert gpu_groups >= 1, "a GPU worker group"
    assert len(images) == 1, images
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile


@pytest.mark.parametrize("name, command", [("train-job.yaml", "train"), ("score-job.yaml", "score")])
def test_job_entrypoints_are_valid_commands_with_gpus_and_bucket_outputs(name, command):
    manifest = _manifest(name)
    words = shlex.split(manifest["spec"]["entrypoint"])
    assert words[:2] == ["ray-sentiment", command]
    args = build_parser().parse_args(words[1:])  # exits (fails the test) on any option the CLI lacks
    assert args.use_gpu
    assert args.output.startswith("s3://")
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True


def test_service_serve_config_is_valid_and_serves_from_gpus():
    from ray.serve.schema import ServeDeploySchema

    manifest = _manifest("service.yaml")
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    [application] = config.applications
    assert application.import_path == "ray_sentiment.serve:app_builder"
    assert set(application.args) <= set(ServeSettings.__dataclass_fields__)
    assert application.args["use_gpu"] is True and application.args["model"].startswith("s3://")
    assert application.args["host"] == "0.0.0.0"  # inside the pod, for the Service
    assert config.proxy_location == "Disabled"  # the replicas answer HTTP themselves
    [service] = [m for m in _manifests("service.yaml") if m["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == application.args["port"]
    # The Service picks this RayService's GPU workers, the pods that hold replicas, once ready.
    assert service["spec"]["selector"]["ray.io/originated-from-cr-name"] == manifest["metadata"]["name"]
    [gpu] = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    [container] = gpu["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": application.args["port"]}
