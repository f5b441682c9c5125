"""Pure parts of the seed-scale work: the README's capacity table (generated, with a drift check) and the operator's
worker-group resize for fixed-size TextGenServices (operator/textgen_operator/capacity.py)."""

from __future__ import annotations

import copy
import json

from textgen_operator import capacity
from textgen_operator.validation import validate

from bench import capacity as table
from tests.sim.sim_nodes import WORKER_NODES


def test_readme_capacity_table_is_generated_from_committed_json():
    readme = table.README.read_text()
    assert table.BEGIN in readme and table.END in readme
    wanted = table.splice(readme, table.render(json.loads(table.LATEST.read_text()), *table.replicas_per_node()))
    assert readme == wanted, "README.md's capacity table is stale: run `python -m bench.capacity`"


def test_capacity_table_rows_are_measured_rate_times_scheduled_replicas():
    results = json.loads(table.LATEST.read_text())
    per_node, node_type = table.replicas_per_node()
    assert (per_node, node_type) == (7, "m5.4xlarge")
    r = table.per_replica(results)
    block = table.render(results, per_node, node_type)
    rows = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == WORKER_NODES
    last = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert last[:3] == ["8", "128", "56"]
    assert last[3] == f"{r['tokens_per_s'] * 56:,.0f}" and last[5] == "56x"
    assert "Projection, not a measurement" in block and "not on an m5.4xlarge" in block


def test_capacity_check_detects_drift(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{table.BEGIN}\nstale\n{table.END}\ntail\n")
    args = ["--readme", str(readme)]
    assert table.main(args + ["--check"]) == 1
    assert table.main(args) == 0 and table.main(args + ["--check"]) == 0
    assert readme.read_text().endswith(f"{table.END}\ntail\n")


RAYCLUSTER = {"spec": {"workerGroupSpecs": [
    {"groupName": "other", "replicas": 5, "minReplicas": 5, "maxReplicas": 5},
    {"groupName": "workers", "replicas": 8, "minReplicas": 8, "maxReplicas": 8},
]}}


def test_fixed_spec_resizes_only_its_worker_group():
    spec = validate("x", {"replicas": 14})  # 7 replicas per m5.4xlarge worker: 2 nodes
    patch = capacity.worker_group_patch(RAYCLUSTER, spec)
    assert patch == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "workers"},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/replicas", "value": 2},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/minReplicas", "value": 2},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/maxReplicas", "value": 2},
    ]
    done = copy.deepcopy(RAYCLUSTER)
    done["spec"]["workerGroupSpecs"][1].update(replicas=2, minReplicas=2, maxReplicas=2)
    assert capacity.worker_group_patch(done, spec) is None


def test_autoscaling_spec_leaves_the_worker_group_to_rays_autoscaler():
    spec = validate("x", {"replicas": 14, "autoscaling": {"minReplicas": 7, "maxReplicas": 56}})
    assert capacity.worker_group_patch(RAYCLUSTER, spec) is None


def test_both_the_active_and_the_pending_cluster_are_resized():
    rs = {"status": {"activeServiceStatus": {"rayClusterName": "a"}, "pendingServiceStatus": {"rayClusterName": "b"}}}
    assert capacity.cluster_names(rs) == ["a", "b"]
    assert capacity.cluster_names({"status": {"pendingServiceStatus": {"rayClusterName": "b"}}}) == ["b"]
    assert capacity.cluster_names(None) == []
