"""cluster.yaml comes up as `ray up` would bring it up: Ray's own schema and checks, then Ray's own AWS bootstrap
(`_bootstrap_config`, what `ray up` runs before launching anything) and Ray's own AWS node provider launching one node
of every type, against a moto server on 127.0.0.1 (EC2, IAM, CloudFormation) after the documented one-time step
(deploy/aws/iam.yaml) has run there. Every node type must end with an existing instance profile, a subnet, a
security group and an instance type EC2 offers in the configured zones; broken variants must fail these checks."""

from __future__ import annotations

import copy
import json
import re
import time
from functools import partial
from pathlib import Path

import boto3
import botocore.exceptions
import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
STACK = ROOT / "deploy" / "aws" / "iam.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
REGION = "us-west-2"


def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def workers(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_cluster_yaml_matches_ray_schema_and_keeps_work_off_the_head():
    config = cluster()
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    assert config["provider"]["type"] == "aws" and config["provider"]["region"] == REGION
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    gpus = {t["node_config"]["InstanceType"]: t["resources"].get("GPU", 0) for t in workers(config).values()}
    assert {k: gpus[k] for k in ("g6.xlarge", "g5.xlarge", "g6.12xlarge", "g5.12xlarge", "p4d.24xlarge",
                                 "p5.48xlarge")} == {"g6.xlarge": 1, "g5.xlarge": 1, "g6.12xlarge": 4,
                                                     "g5.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}
    for name, t in workers(config).items():
        spot = t["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}
        assert spot == ("-spot-" in name), name  # the names say which types are spot (the fallback order uses them)
        assert 0 == t["min_workers"] <= t["max_workers"] <= config["max_workers"]
    # No package installs on the nodes: the image has everything (tests/test_dockerfile.py resolves its packages).
    # deploy/aws/setup.sh pushes that image to the region's ECR that the hosts pull it from.
    setup = dict(re.findall(r"^(REGION|IMAGE)=(\S+)", (ROOT / "deploy" / "aws" / "setup.sh").read_text(), re.M))
    assert not config.get("setup_commands") and config["docker"]["image"] == setup["IMAGE"]
    pull = " ".join(config["initialization_commands"])
    assert f"ecr.{setup['REGION']}.amazonaws.com" in pull and f"/{setup['IMAGE']}" in pull
    assert setup["REGION"] == REGION


def test_ray_up_accepts_it():
    """What `ray up` does before launching: fill in the AWS defaults, then Ray's own checks (schema, head type)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster()))


def test_schema_rejects_a_broken_config():
    """The check above can fail: a node type without node_config is refused by the schema."""
    config = cluster()
    del config["available_node_types"]["head"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def test_a_failed_spot_launch_falls_back_to_the_next_type_of_the_same_shape():
    """Ray's own choice of node types (`get_nodes_for`) with jobs/autoscaling.py's scorer, as the head runs it: the
    preferred spot type first, the next one once its launch failed, on-demand last. Ray's default scorer keeps asking
    for the failed type."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeProviderAvailabilityTracker
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    from jobs.autoscaling import launchable_first

    config = cluster()
    assert "RAY_AUTOSCALER_UTILIZATION_SCORER=jobs.autoscaling.launchable_first" in " ".join(
        config["head_start_ray_commands"])
    types, head = config["available_node_types"], config["head_node_type"]
    tracker = NodeProviderAvailabilityTracker()

    def choose(scorer, demand):
        scorer = partial(scorer, node_availability_summary=tracker.summary())
        chosen, _ = get_nodes_for(types, {}, head, 10, [demand], scorer)
        return list(chosen)

    one_gpu, eight_gpus, cpus = {"CPU": 1, "GPU": 1}, {"CPU": 8, "GPU": 8}, {"CPU": 4}
    assert [choose(launchable_first, d) for d in (one_gpu, eight_gpus, cpus)] == [
        ["gpu1-spot-g6"], ["gpu8-spot-p5"], ["cpu-spot-m6i"]]
    no_capacity = NodeLaunchException("InsufficientInstanceCapacity", "no spot capacity", None)  # as AWS fails
    for failed in ("gpu1-spot-g6", "gpu8-spot-p5", "cpu-spot-m6i"):
        tracker.update_node_availability(failed, time.time(), no_capacity)
    assert [choose(launchable_first, d) for d in (one_gpu, eight_gpus, cpus)] == [
        ["gpu1-spot-g5"], ["gpu8-spot-p4d"], ["cpu-spot-m5"]]
    assert choose(_default_utilization_scorer, one_gpu) == ["gpu1-spot-g6"]  # without it: no fallback
    tracker.update_node_availability("gpu1-spot-g5", time.time(), no_capacity)
    assert choose(launchable_first, one_gpu) == ["gpu1-ondemand-g5"]


# Ray's AWS bootstrap and node provider against moto


@pytest.fixture(scope="module")
def aws(s3_server):
    """moto (the session's server: it mocks every service) with the one-time stack of deploy/aws/iam.yaml deployed,
    as `aws cloudformation deploy` would; boto3 clients made anywhere reach it through AWS_ENDPOINT_URL."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
        formation = boto3.client("cloudformation", region_name=REGION)
        formation.create_stack(StackName="sas-ray", TemplateBody=STACK.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
                               Parameters=[{"ParameterKey": "Bucket", "ParameterValue": "sas-ray-test"}])
        assert formation.describe_stacks(StackName="sas-ray")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
        yield s3_server["endpoint_url"]


@pytest.fixture(scope="module")
def bootstrapped(aws, tmp_path_factory):
    """cluster.yaml after `ray up`'s bootstrap (Ray's AWS clients made afresh for moto, its new SSH key in a
    temporary HOME); EC2 launches check instance types (`MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION`). Ray reads the
    instance types' sizes from one listing of all of them; moto takes ~20 s to render ~900 types, so the listing
    asks EC2 for the config's types only (a type EC2 does not know still fails that call)."""
    from ray.autoscaler._private.aws.utils import client_cache, resource_cache
    from ray.autoscaler._private.commands import _bootstrap_config

    types = sorted({t["node_config"]["InstanceType"] for t in cluster()["available_node_types"].values()})

    def list_ec2_instances(region, aws_credentials=None):
        return boto3.client("ec2", region_name=region).describe_instance_types(InstanceTypes=types)["InstanceTypes"]

    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        env.setattr("moto.settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION", True)
        env.setattr("ray.autoscaler._private.aws.node_provider.list_ec2_instances", list_ec2_instances)
        resource_cache.cache_clear()
        client_cache.cache_clear()
        yield _bootstrap_config(cluster(), no_config_cache=True)
        resource_cache.cache_clear()
        client_cache.cache_clear()


def check_bootstrapped(config: dict) -> None:
    """Every node type of a bootstrapped config has an existing instance profile with a role, a subnet in the
    configured zones, an existing security group, and an instance type that EC2 offers in those zones."""
    ec2, iam = boto3.client("ec2", region_name=REGION), boto3.client("iam", region_name=REGION)
    zones = set(config["provider"]["availability_zone"].split(","))
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        profile = node.get("IamInstanceProfile") or (config["head_node"].get("IamInstanceProfile")
                                                     if name == config["head_node_type"] else None)
        assert profile, f"{name}: no instance profile (its S3 reads and writes would fail)"
        try:
            found = iam.get_instance_profile(InstanceProfileName=profile.get("Name") or profile["Arn"].split("/")[-1])
        except botocore.exceptions.ClientError as err:
            raise AssertionError(f"{name}: instance profile {profile} does not exist: {err}") from None
        assert found["InstanceProfile"]["Roles"], f"{name}: instance profile {profile} has no role"
        subnets = ec2.describe_subnets(SubnetIds=node["SubnetIds"])["Subnets"]
        assert subnets and {s["AvailabilityZone"] for s in subnets} <= zones, f"{name}: subnets {node['SubnetIds']}"
        assert ec2.describe_security_groups(GroupIds=node["SecurityGroupIds"])["SecurityGroups"], name
        try:
            ec2.describe_instance_types(InstanceTypes=[node["InstanceType"]])
        except botocore.exceptions.ClientError as err:
            raise AssertionError(f"{name}: instance type {node['InstanceType']}: {err}") from None
        offers = ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [node["InstanceType"]]}])
        assert zones & {o["Location"] for o in offers["InstanceTypeOfferings"]}, f"{name}: not offered in {zones}"


def launch_one_of_each(config: dict) -> dict[str, dict]:
    """Ray's own AWS node provider starts one node of every type (the head's profile as the launcher sets it);
    returns EC2's description of each."""
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    provider = _get_node_provider(config["provider"], config["cluster_name"], use_cache=False)
    ec2 = boto3.client("ec2", region_name=REGION)
    launched = {}
    for name, node_type in config["available_node_types"].items():
        node = copy.deepcopy(node_type["node_config"])
        if name == config["head_node_type"]:
            node.update(config["head_node"])
        before = set(provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: name}))
        provider.create_node(node, {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: name}, 1)
        (instance_id,) = set(provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: name})) - before
        launched[name] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    provider.terminate_nodes([i["InstanceId"] for i in launched.values()])
    return launched


def test_ray_aws_bootstrap_gives_every_node_type_a_profile_subnet_and_group(bootstrapped):
    check_bootstrapped(bootstrapped)
    for name, instance in launch_one_of_each(bootstrapped).items():
        profile = bootstrapped["available_node_types"][name]["node_config"]["IamInstanceProfile"]["Name"]
        assert instance["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{profile}"), name
        assert instance["SubnetId"] and instance["SecurityGroups"], name
        assert (instance.get("InstanceLifecycle") == "spot") == ("-spot-" in name), name


@pytest.mark.parametrize("breakage, message", [
    (lambda types: types["gpu1-spot-g6"]["node_config"].pop("IamInstanceProfile"), "gpu1-spot-g6: no instance profile"),
    (lambda types: types["cpu-spot-m5"]["node_config"].update(IamInstanceProfile={"Name": "sas-ray-typo"}),
     "cpu-spot-m5: instance profile .* does not exist"),
    (lambda types: types["gpu4-spot-g5"]["node_config"].update(InstanceType="g9.12xlarge"),
     "gpu4-spot-g5: instance type g9.12xlarge"),
], ids=["missing-profile", "unknown-profile", "unknown-instance-type"])
def test_a_broken_cluster_fails_the_checks(bootstrapped, breakage, message):
    """The bootstrap itself lets all three through (it gives no worker a profile and looks up no instance type)."""
    config = copy.deepcopy(bootstrapped)
    breakage(config["available_node_types"])
    with pytest.raises(AssertionError, match=message):
        check_bootstrapped(config)
