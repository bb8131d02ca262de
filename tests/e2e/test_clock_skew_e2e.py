"""The provider's clock 2 s behind ours, covered by ``pollDelay``.

Its own module (and stack): two stacks alive at once would share the broker, and one
stack's workers would poll the other's instances against the wrong simulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import ServiceUrls
from tests.e2e.conftest import Stack, expected_from_changes, start_stack
from tests.e2e.test_polling_e2e import contacts_config, keys_of, orders_config


@pytest.fixture(scope="module")
def skewed_stack(
    service_urls: ServiceUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("skewed")
    running = start_stack(service_urls, workdir, sim_args=("--clock-skew-ms", "2000"))
    try:
        yield running
    finally:
        running.stop_all()


def test_provider_clock_behind_with_poll_delay(skewed_stack: Stack) -> None:
    tenant = skewed_stack.new_tenant()
    tenant.create_instance({**contacts_config(pollDelay=3), **orders_config(pollDelay=3)})
    contacts = [tenant.write("contacts", given_name=f"s{i}") for i in range(3)]
    orders = [tenant.write("orders", title=f"s{i}") for i in range(3)]
    expected = keys_of(contacts, "contacts", "CREATED") | keys_of(orders, "orders", "CREATED")
    tenant.wait_received(expected)
    time.sleep(1.1)
    tenant.update("orders", orders[0]["id"], title="later")
    expected.add(("orders", str(orders[0]["id"]), "UPDATED"))
    tenant.assert_exactly(expected)
    assert expected_from_changes(tenant.changes()) >= {e for e in expected if e[2] == "CREATED"}
