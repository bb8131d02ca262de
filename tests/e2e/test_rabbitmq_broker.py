"""The whole pipeline with RabbitMQ as the Celery broker (SPEC §2: ``amqp://`` must work).

Runs when a RabbitMQ answers on 127.0.0.1:5672 (as on the project's CI machine); skipped
elsewhere, where the Redis-broker suites cover the same scenarios.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import ServiceUrls
from tests.e2e.conftest import Stack, http_json, start_stack
from tests.e2e.test_polling_e2e import contacts_config, keys_of

BROKER = os.environ.get("POLLINATOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5672")


@pytest.fixture(scope="module")
def stack(service_urls: ServiceUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        service_urls, tmp_path_factory.mktemp("amqp"), extra_env={"POLLINATOR_BROKER_URL": BROKER}
    )
    try:
        yield running
    finally:
        running.stop_all()


def test_polls_and_deliveries_through_rabbitmq(stack: Stack) -> None:
    status, ready = http_json("GET", f"{stack.api_url}/readyz")
    assert status == 200, ready  # the broker probe went to RabbitMQ
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    records = [tenant.write("contacts", given_name=f"r{i}") for i in range(3)]
    tenant.assert_exactly(keys_of(records, "contacts", "CREATED"))
