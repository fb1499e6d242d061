"""The workers' account on an MLflow tracking server that runs MLflow's basic-auth app.

The production profile closes the tracking server (``deploy/mlflow/start-mlflow.sh``): every
request but ``/health`` carries a user. MLflow creates only its admin on the first start;
the workers' account (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, which
MLflow's client sends with every request) is made here, by the admin, before any task runs:
``airflow-init`` calls ``driftline mlflow-account``. It is an ordinary user: reading is
MLflow's ``default_permission`` (READ), and it manages what it creates (the experiments, the
registered model and so its versions and aliases). Nobody without an account can move an
alias or register a version; the admin account is for people, not for the loop.

Run again, an existing account gets the password the environment holds now, so rotating the
workers' password is: change ``.env``, run ``airflow-init`` again, restart the workers.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from driftline.errors import InvalidInput, Unavailable

_USERS = "/api/2.0/mlflow/users"


def _call(
    tracking_uri: str, method: str, path: str, auth: tuple[str, str], body: Any = None
) -> tuple[int, dict[str, Any]]:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(
        tracking_uri.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(
            f"MLflow tracking server unreachable at {tracking_uri} (MLFLOW_TRACKING_URI): {exc}"
        ) from exc
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"message": raw.decode(errors="replace")[:300]}
    if status in (401, 403):
        raise InvalidInput(
            f"MLflow at {tracking_uri} refused the admin account {auth[0]!r} ({status}): check "
            "MLFLOW_ADMIN_PASSWORD in .env against the password the server was first started "
            "with (MLflow keeps the first one)"
        )
    if status >= 500:
        raise Unavailable(f"MLflow at {tracking_uri} answered {status} to {method} {path}")
    return status, answer


def ensure_account(
    tracking_uri: str, *, admin: tuple[str, str], username: str, password: str
) -> str:
    """Create the account ``username`` or set its password; returns ``created`` or ``updated``."""
    if not username or not password:
        raise InvalidInput(
            "the workers' MLflow account needs MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (set them in .env)"
        )
    if username == admin[0]:
        raise InvalidInput(
            f"MLFLOW_TRACKING_USERNAME is the MLflow admin ({username!r}): the workers get an "
            "account of their own, so the admin's password stays with people"
        )
    query = urllib.parse.urlencode({"username": username})
    status, answer = _call(tracking_uri, "GET", f"{_USERS}/get?{query}", admin)
    body = {"username": username, "password": password}
    if status == 404:
        status, answer = _call(tracking_uri, "POST", f"{_USERS}/create", admin, body)
        outcome = "created"
    elif status == 200:
        status, answer = _call(tracking_uri, "PATCH", f"{_USERS}/update-password", admin, body)
        outcome = "updated"
    if status != 200:
        raise InvalidInput(
            f"MLflow at {tracking_uri} refused to set up the account {username!r}: "
            f"{status} {answer.get('message', answer)}"
        )
    return outcome
