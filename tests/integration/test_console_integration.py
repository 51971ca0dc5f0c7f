"""The console shows orders without an image, images without an order, and HL7/FHIR
messages; a failed message is an open failure that the operator can retry."""

from __future__ import annotations

from fastapi.testclient import TestClient

from dxr_node.node.config import load_config
from dxr_node.node.integration_store import IntegrationStore, Order, OutboundMessage
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.web.app import create_app


def test_orders_images_and_messages_in_the_console(tmp_path, database):
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path),
                                                "database": str(database)})
    store = Store(config.database_target)
    istore = IntegrationStore(store)
    job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                          str(tmp_path / "x.dcm"), 1, patient_id="P77",
                                          study_date="20240115")).job_id
    istore.record_order(Order(placer_order_number="PL5", accession_number="ACC5",
                              patient_id="P55", diagnoses=(("M81.0", "Osteoporosis", "I10"),)),
                        "C1", "127.0.0.1:1")
    istore.queue(job, [OutboundMessage("ORU", "F", "HL7", "DXR1ORUF", "MSH|...")])
    (message,) = istore.claim("HL7", 10)
    istore.failed(message.id, "rejected by the receiver: AR")

    # Loopback client and Host (the console's host allow-list refuses "testserver").
    client = TestClient(create_app(config, store, lambda: True), follow_redirects=False,
                        client=("127.0.0.1", 50000), base_url="http://127.0.0.1")
    state = client.get("/api/integration").json()
    assert [o["placer_order_number"] for o in state["orders_without_image"]] == ["PL5"]
    assert [i["job_id"] for i in state["images_without_order"]] == [job]
    assert state["orders_without_image"][0]["job_ids"] == []
    assert state["message_counts"]["failed"] == 1
    page = client.get("/integration").text
    assert "PL5" in page and "M81.0" in page and "DXR1ORUF" in page and "rejected" in page
    failures = client.get("/failures").text
    assert f'action="/messages/{message.id}/retry' in failures and "ORU message" in failures

    answer = client.post(f"/messages/{message.id}/retry?back=/failures")
    assert answer.status_code == 303
    assert istore.messages()[0]["state"] == "pending" and store.open_failure_count() == 0
    assert istore.claim("HL7", 10)  # being sent: nothing to retry
    assert client.post(f"/api/messages/{message.id}/retry").status_code == 409
    store.close()
