"""The autoscaler's choice of node type for cluster.yaml: among the types that fit a demand equally well, one whose
launch just failed (no spot capacity) comes last, so the next type of the same shape is launched instead.

Ray's default choice ignores failed launches and asks for the same spot type again and again. cluster.yaml's head
starts Ray with RAY_AUTOSCALER_UTILIZATION_SCORER=jobs.autoscaling.launchable_first. Ray forgets a failure after
AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S (30 minutes), and the type is tried again. Among equals Ray takes the
type whose name sorts last, which is why cluster.yaml's names run spot-g6 > spot-g5 > ondemand-g5."""

from __future__ import annotations

from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer


def launchable_first(node_resources: dict, resources: list[dict], node_type: str, *, node_availability_summary):
    """Ray's utilization score of `node_type` for the demand `resources`, preceded by whether its last launch
    succeeded (True when never tried); None when the demand does not fit it at all."""
    score = _default_utilization_scorer(node_resources, resources, node_type,
                                        node_availability_summary=node_availability_summary)
    if score is None:
        return None
    record = node_availability_summary.node_availabilities.get(node_type)
    return (record is None or record.is_available, *score)
