"""A test poll runs a configuration against the provider, shows its events, stores nothing."""

from __future__ import annotations

import asyncio

from tests.integration.test_polling import BASE, Harness, contacts_config, harness  # noqa: F401
from tests.unit.domain.test_hubfields import OC_APPOINTMENTS


async def test_a_test_poll_shows_the_events_and_stores_nothing(harness: Harness) -> None:  # noqa: F811
    instance_id = await harness.create_instance(contacts_config())
    created = await harness.write("contacts", given_name="Ada")
    await asyncio.sleep(0.01)
    before = harness.state("contacts")
    url = f"{BASE}/instances/{instance_id}/polling/test"
    resp = await harness.api.post(url, json={}, headers=harness.headers)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["stored"] is False
    [contacts] = result["resources"]
    assert contacts["error"] is None
    assert contacts["request"].startswith("/contacts?since=")
    assert {(e["objectId"], e["eventType"]) for e in contacts["events"]} == {
        (str(created["id"]), "CREATED")
    }
    assert harness.events() == []  # nothing stored
    after = harness.state("contacts")
    assert after["watermark_at"] == before["watermark_at"]
    assert after["last_polled_at"] == before["last_polled_at"]
    outcome = await harness.poll()  # the real poll still finds the change
    assert outcome.events == 1


async def test_a_copied_open_connectors_configuration_can_be_tried_first(
    harness: Harness,  # noqa: F811
) -> None:
    instance_id = await harness.create_instance(contacts_config())
    await harness.write("appointments", title="call")
    url = f"{BASE}/instances/{instance_id}/polling/test"
    resp = await harness.api.post(
        url,
        json={"configuration": OC_APPOINTMENTS, "since": "2020-01-01T00:00:00Z"},
        headers=harness.headers,
    )
    assert resp.status == 200, await resp.text()
    [appointments] = (await resp.json())["resources"]
    assert appointments["request"] == "/appointments"
    assert appointments["skippedCount"] == 0
    assert appointments["eventCount"] == appointments["records"] >= 1


async def test_a_bad_test_configuration_is_a_400_naming_the_field(harness: Harness) -> None:  # noqa: F811
    instance_id = await harness.create_instance(contacts_config())
    url = f"{BASE}/instances/{instance_id}/polling/test"
    bad = {"configuration": {"contacts": {"url": "/contacts?x=${nope}", "idField": "id"}}}
    resp = await harness.api.post(url, json=bad, headers=harness.headers)
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("configuration.contacts.url")
    for body in ({"since": "0001-01-01T00:00:00Z"}, {"since": 5}, {"other": 1}):
        resp = await harness.api.post(url, json=body, headers=harness.headers)
        assert resp.status == 400, body
