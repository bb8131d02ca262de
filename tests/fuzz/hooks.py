"""Schemathesis hooks for ``make fuzz``: aim path ids at real instances of the fuzzed org.

Loaded by the schemathesis CLI through ``SCHEMATHESIS_HOOKS``; the API's URL, the
credentials and the ids of its instances come from the environment the test sets.
"""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis
from schemathesis.generation.meta import TestPhase

from app.domain.limits import MAX_INSTANCE_ID
from tests.integration.conftest import create_body

BASE = "/elements/api-v2"


def throwaway_instance(api_url: str, authorization: str) -> int:
    """A new instance for one DELETE, so deletes never starve the other operations."""
    resp = requests.post(
        f"{api_url}{BASE}/instances",
        json=create_body(),
        headers={"Authorization": authorization},
        timeout=30,
    )
    resp.raise_for_status()
    return int(resp.json()["id"])


def aim(method: str, instance_id: Any, ids: list[int], api_url: str, authorization: str) -> Any:
    """The id to send: a schema-valid id becomes a real one half of the time (always for
    DELETE, a throwaway); an invalid one is sent as generated, to be refused."""
    if not isinstance(instance_id, int) or not 1 <= instance_id <= MAX_INSTANCE_ID:
        return instance_id
    if method.upper() == "DELETE":
        return throwaway_instance(api_url, authorization)
    if instance_id % 2 == 0:
        return ids[instance_id % len(ids)]
    return instance_id


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase sends through here (map_* hooks see only the fuzzing phase)."""
    params = case.path_parameters
    if not params or "id" not in params:
        return
    if case.meta is not None and case.meta.phase.name == TestPhase.STATEFUL:
        return  # ids come from the scenario's own creates; deletes remove only those
    ids = [int(i) for i in os.environ["POLLINATOR_FUZZ_IDS"].split(",")]
    params["id"] = aim(
        case.method,
        params["id"],
        ids,
        os.environ["POLLINATOR_FUZZ_API"],
        os.environ["POLLINATOR_FUZZ_AUTHORIZATION"],
    )
