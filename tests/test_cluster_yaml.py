"""cluster.yaml is a valid `ray up` config (Ray's own autoscaler schema) whose head takes no work."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def test_cluster_yaml_matches_ray_schema_and_keeps_work_off_the_head():
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"] == {"CPU": 0}
    workers = {name: t for name, t in types.items() if name != head}
    gpus = {t["node_config"]["InstanceType"]: t["resources"].get("GPU", 0) for t in workers.values()}
    assert gpus["g5.xlarge"] == 1 and gpus["g5.12xlarge"] == 4 and gpus["p4d.24xlarge"] == 8
    for t in workers.values():
        assert t["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"]
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "~/sas-ray" in setup and "spconv-cu12x" in setup
    assert "~/sas-ray" in config["file_mounts"]


def test_ray_up_accepts_it():
    """What `ray up` does before launching: fill in the AWS defaults, then Ray's own checks (schema, head type)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(CLUSTER.read_text())))


def test_schema_rejects_a_broken_config():
    """The check above can fail: a node type without node_config is refused by the schema."""
    config = yaml.safe_load(CLUSTER.read_text())
    del config["available_node_types"]["head"]["node_config"]
    try:
        jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as err:
        assert "node_config" in err.message
    else:
        raise AssertionError("the schema accepted a node type without node_config")
