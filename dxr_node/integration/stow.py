"""DICOMweb STOW-RS (PS3.18 10.5): a destination kind beside DICOM C-STORE.

Each object is POSTed on its own to ``{url}/studies`` as multipart/related
(type="application/dicom"), so memory stays bounded by one object. The outcome maps to
the dispatcher's three (``dxr_node.node.dispatch``):

- ``SENT``: 200, or 202 without our instance in the Failed SOP Sequence (a warning).
- ``RETRY``: network trouble, 408, 429, 5xx, or a Failure Reason 0xA7xx (out of
  resources) / 0x0213 for our instance.
- ``FAILED``: other 4xx (400 bad request, 401/403 credentials, 409 conflict, 413, 415)
  and any other Failure Reason: repeating the request would get the same answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dxr_node.node.dispatch import FAILED, RETRY, SENT, Delivery, classify_status

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
MAX_ANSWER_BYTES = 1 << 20


def send_files(destination: Any, paths: Sequence[str | Path], *,
               timeout_s: float = 30.0) -> list[Delivery]:
    """STOW each file to ``destination.url``; one Delivery per path, never raises."""
    headers = {"Accept": "application/dicom+json"}
    if getattr(destination, "token", None):
        headers["Authorization"] = f"Bearer {destination.token}"
    target = destination.url.rstrip("/") + "/studies"
    out = []
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        for path in map(Path, paths):
            out.append(_send_one(client, target, path))
    return out


def _send_one(client: httpx.Client, target: str, path: Path) -> Delivery:
    try:
        uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        data = path.read_bytes()
    except (OSError, AttributeError, InvalidDicomError) as exc:
        return Delivery(path, None, FAILED, None, f"unreadable object: {exc}")
    boundary = f"dxr-{secrets.token_hex(12)}"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    try:
        response = client.post(target, content=body, headers={"Content-Type": content_type})
    except httpx.HTTPError as exc:
        return Delivery(path, uid, RETRY, None, f"{target}: {type(exc).__name__}: {exc}")
    return _classify(path, uid, response)


def _classify(path: Path, uid: str, response: httpx.Response) -> Delivery:
    code = response.status_code
    where = f"STOW-RS HTTP {code}"
    reason = _failure_reason(response, uid) if code in (202, 409) or code >= 400 else None
    if code == 200 or (code == 202 and reason is None):
        return Delivery(path, uid, SENT, 0, f"{where}" + (" (warning)" if code == 202 else ""))
    if reason is not None:
        outcome, text = classify_status(reason)
        return Delivery(path, uid, FAILED if outcome == SENT else outcome, reason,
                        f"{where}: {text}")
    if code in (408, 429) or code >= 500:
        return Delivery(path, uid, RETRY, None, f"{where}: {response.text[:200]}")
    return Delivery(path, uid, FAILED, None, f"{where}: {response.text[:200]}")


def _failure_reason(response: httpx.Response, uid: str) -> int | None:
    """Our instance's Failure Reason in the answer's Failed SOP Sequence (DICOM JSON)."""
    if len(response.content) > MAX_ANSWER_BYTES:
        return None
    try:
        answer = response.json()
    except ValueError:
        return None
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    if not isinstance(answer, dict):
        return None
    for item in (answer.get(_FAILED_SOP_SEQUENCE) or {}).get("Value", []):
        if not isinstance(item, dict):
            continue
        item_uid = ((item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]
        if item_uid == uid:
            values = (item.get(_FAILURE_REASON) or {}).get("Value") or [0x0110]
            try:
                return int(values[0])
            except (TypeError, ValueError):
                return 0x0110
    return None
