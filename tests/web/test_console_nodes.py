"""The console's Nodes page and /api/nodes on both backends: every registered node,
its last heartbeat and what it holds, and each running job with its holder."""

from __future__ import annotations

from console_testing import console_client

from dxr_node.node.config import NodeConfig
from dxr_node.node.store import InstanceInfo, Store


def test_nodes_and_who_holds_which_job(database, tmp_path):
    config = NodeConfig(data_dir=tmp_path, database=database)
    with Store(config.database_target) as store:
        store.register_node("node-a", host="h1", version="0.1.0", pid=11, roles="scp,workers")
        store.register_node("node-b", host="h2", version="0.1.0", pid=12, roles="workers")
        store.add_instance(InstanceInfo("1.2.3", "1.2", "1.2.840.10008.1.2.1", "/s/x.dcm", 1))
        job = store.claim_job("node-b/worker-0-12", node="node-b", lease_s=60)
        client = console_client(config, store)
        data = client.get("/api/nodes").json()
        assert {n["name"]: n["running_jobs"] for n in data["nodes"]} == {"node-a": 0,
                                                                        "node-b": 1}
        (running,) = data["running_jobs"]
        assert running["job_id"] == job.id and running["node"] == "node-b"
        assert data["queues"]["jobs"]["running"] == 1
        page = client.get("/nodes")
        assert page.status_code == 200
        assert "node-b/worker-0-12" in page.text and "node-a" in page.text
        # The console's other read models on this engine too.
        overview = client.get("/api/overview")
        assert overview.status_code == 200, overview.text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "dxr_queue_depth" in metrics.text
        for path in ("/", "/exams", f"/exams/{job.id}", "/failures", "/api/exams"):
            assert client.get(path).status_code == 200, path
