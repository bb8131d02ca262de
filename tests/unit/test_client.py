"""The create body the typed client sends is SPEC §3's, key for key and in order."""

from __future__ import annotations

import json

from app.client import InstanceSpec, OAuthApp, authorization
from tests.support.spec_example import SPEC_CONTACTS_POLLER as CONTACTS

# SPEC.md §3 "Create body", verbatim.
SPEC_BODY = {
    "element": {"key": "infusionsoftrest"},
    "providerData": {"code": "<authorization grant code>"},
    "name": "API Instance with Polling",
    "tags": ["crm"],
    "configuration": {
        "oauth.api.key": "<client id>",
        "oauth.api.secret": "<client secret>",
        "oauth.callback.url": "https://app.example.com/oauth/callback",
        "event.notification.enabled": True,
        "event.vendor.type": "polling",
        "event.notification.callback.url": "https://app.example.com/events",
        "event.notification.signature.key": "<optional>",
        "event.poller.refresh_interval": 15,
        "event.poller.configuration": {"contacts": CONTACTS},
    },
}
SPEC = InstanceSpec(
    app=OAuthApp("<client id>", "<client secret>", "https://app.example.com/oauth/callback"),
    callback_url="https://app.example.com/events",
    tags=["crm"],
    refresh_minutes=15,
    signature_key="<optional>",
    poller={"contacts": CONTACTS},
)


def test_the_body_is_the_spec_example() -> None:
    body = SPEC.body("<authorization grant code>")
    assert json.dumps(body) == json.dumps(SPEC_BODY)  # same keys, same values, same order


def test_optional_keys_are_left_out_and_extra_keys_win() -> None:
    spec = InstanceSpec(
        app=OAuthApp("id", "secret", "https://cb"),
        callback_url="https://events",
        extra={"event.poller.refresh_interval": "0.5", "event.notification.enabled": False},
    )
    config = spec.body("c")["configuration"]
    assert "event.notification.signature.key" not in config
    assert "event.poller.configuration" not in config  # the engine's default resources
    assert config["event.poller.refresh_interval"] == "0.5"
    assert config["event.notification.enabled"] is False


def test_each_body_is_a_fresh_copy() -> None:
    first = SPEC.body("a")
    first["configuration"]["event.poller.configuration"]["contacts"]["idField"] = "changed"
    assert SPEC.body("b")["configuration"]["event.poller.configuration"]["contacts"] == CONTACTS


def test_authorization_header() -> None:
    assert authorization("u", "o") == "User u, Organization o"
