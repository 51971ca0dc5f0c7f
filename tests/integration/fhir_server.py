"""A small FHIR REST server for the tests: takes transaction Bundles (POST [base]),
honours conditional creates (ifNoneExist) and conditional updates (PUT
Type?identifier=system|value: replace the match, else create) on identifiers, rewrites
urn:uuid references to Type/id, serves GET [base]/Type/id, and checks the bearer
token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FHIRStore:
    token: str
    resources: dict[str, dict] = field(default_factory=dict)  # "Type/id" -> resource
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_type(self, kind: str) -> list[dict]:
        with self.lock:
            return [r for key, r in self.resources.items() if key.startswith(f"{kind}/")]

    def _existing(self, kind: str, condition: str) -> str | None:
        system, _, value = condition.removeprefix("identifier=").partition("|")
        for key, resource in self.resources.items():
            if key.startswith(f"{kind}/") and any(
                    i.get("system") == system and i.get("value") == value
                    for i in resource.get("identifier", [])):
                return key
        return None

    def transaction(self, bundle: dict) -> dict:
        with self.lock:
            self.posts += 1
            mapping, responses = {}, []
            for entry in bundle["entry"]:
                kind = entry["resource"]["resourceType"]
                request = entry["request"]
                if request["method"] == "PUT":
                    key = self._existing(kind, request["url"].partition("?")[2])
                    if key is not None:
                        self.resources[key] = entry["resource"]
                else:
                    key = self._existing(kind, request.get("ifNoneExist", ""))
                status = "200 OK"
                if key is None:
                    key = f"{kind}/{len(self.resources) + 1}"
                    self.resources[key] = entry["resource"]
                    status = "201 Created"
                mapping[entry["fullUrl"]] = key
                responses.append({"response": {"status": status, "location": key}})
            text = json.dumps(self.resources)
            for full_url, key in mapping.items():
                text = text.replace(full_url, key)
            self.resources = json.loads(text)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}


@contextmanager
def fhir_server(token: str) -> Iterator[tuple[str, FHIRStore]]:
    store = FHIRStore(token)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {store.token}":
                return True
            self._answer(401, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "login"}]})
            return False

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self._authorised():
                bundle = json.loads(body)
                if bundle.get("type") != "transaction":
                    self._answer(400, {"resourceType": "OperationOutcome"})
                    return
                self._answer(200, store.transaction(bundle))

        def do_GET(self) -> None:
            if not self._authorised():
                return
            resource = store.resources.get(self.path.strip("/").removeprefix("fhir/"))
            if resource is None:
                self._answer(404, {"resourceType": "OperationOutcome"})
            else:
                self._answer(200, resource)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
