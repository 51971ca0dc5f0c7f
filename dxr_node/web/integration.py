"""Console view of the hospital interfaces: orders without an image, images without an
order, inbound HL7 messages not accepted, and outbound HL7/FHIR messages (with retry).

Its own router so that the console's other modules stay as they are; included by
``dxr_node.web.app`` behind the same access check.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.logs import log_event
from dxr_node.web.auth import require_same_origin

log = logging.getLogger("dxr_node.web")

router = APIRouter()


def _istore(request: Request) -> IntegrationStore:
    return IntegrationStore(request.app.state.store)


def integration_state(request: Request) -> dict[str, Any]:
    istore = _istore(request)
    return {
        "orders_without_image": istore.orders(status="open"),
        "images_without_order": istore.images_without_order(),
        "inbound": istore.inbound(),
        "messages": istore.messages(),
        "message_counts": istore.counts(),
    }


@router.get("/api/integration", tags=["integration"],
            summary="Orders, unmatched images and HL7/FHIR messages")
def get_integration(request: Request) -> dict[str, Any]:
    return integration_state(request)


@router.get("/api/integration/orders", tags=["integration"], summary="Received orders")
def get_orders(request: Request, status: str | None = None) -> list[dict[str, Any]]:
    if status not in (None, "open", "matched", "cancelled"):
        raise HTTPException(422, "status: open, matched or cancelled")
    return _istore(request).orders(status=status)


def _retry(request: Request, message_id: int) -> bool:
    ok = _istore(request).retry_message(message_id)
    log_event(log, "operator_retry", message=message_id, done=ok,
              client=request.client.host if request.client else None)
    return ok


@router.post("/api/messages/{message_id}/retry", tags=["integration"],
             summary="Send a failed or waiting HL7/FHIR message again now")
def post_retry_message(request: Request, message_id: int) -> dict[str, Any]:
    if not _retry(request, message_id):
        raise HTTPException(409, f"message {message_id} is not failed or waiting")
    return {"message": message_id, "retried": True}


@router.get("/integration", response_class=HTMLResponse, include_in_schema=False)
def integration_page(request: Request) -> HTMLResponse:
    from dxr_node.web.pages import render

    return render(request, "integration.html", title="Orders & messages",
                  **integration_state(request))


@router.post("/messages/{message_id}/retry", include_in_schema=False,
             dependencies=[Depends(require_same_origin)])
def retry_message_form(request: Request, message_id: int, back: str | None = None) -> Response:
    from dxr_node.web.pages import _back, _redirect

    ok = _retry(request, message_id)
    text = (f"Message {message_id} queued to be sent again." if ok
            else f"Message {message_id} was not failed or waiting: nothing to retry.")
    return _redirect(_back(back, "/integration"), text)
