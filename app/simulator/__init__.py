"""Infusionsoft (Keap) REST v1 simulator: ``pollinator simulate`` (SPEC §6).

Run it in-process with ``create_app(SimulatorConfig(...))`` (``app[SIMULATOR]`` exposes the
state) or as ``pollinator simulate``. Endpoints:

* ``GET /app/oauth/authorize?client_id&redirect_uri&response_type=code&scope&state[&account]``
  -> 302 ``redirect_uri?code&state``; ``POST /token`` (form; credentials in form or Basic).
* ``GET /crm/rest/v1/{resource}[/]`` and ``GET /crm/rest/v1/{resource}/{id}`` with a Bearer
  token; resources: contacts, opportunities, orders, tasks, appointments, transactions, files,
  notes, companies, products (see :mod:`app.simulator.resources` for fields and date filters,
  :mod:`app.simulator.listing` for limit/since/until/next decisions).
* Admin (no auth, JSON): ``GET /_sim/accounts``; ``GET|POST /_sim/accounts/{a}``
  (``{"records": N, "resources": [...]}``); ``GET /_sim/accounts/{a}/changes?since=ISO``;
  ``POST /_sim/accounts/{a}/{resource}``; ``GET|PATCH|DELETE /_sim/accounts/{a}/{resource}/{id}``;
  ``POST|GET|DELETE /_sim/faults``; ``POST|GET /_sim/mutator``; ``GET|DELETE /_sim/stats``.

Seeded accounts are named ``acct-1`` .. ``acct-N``; seeded records are history (dated in the
30 days before start) and are not in the change log.
"""

from app.simulator.config import SimulatorConfig
from app.simulator.server import SIMULATOR, Simulator, create_app

__all__ = ["SIMULATOR", "SimulatorConfig", "Simulator", "create_app"]
