"""The operator's view: a real browser on the Airflow UI, the official REST client, access
control, trigger-form validation and extra links."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from driftline import registry
from driftline.settings import REPO_ROOT
from tests.e2e.conftest import MODEL, RunningStack, wait_for

RETRAIN = f"{MODEL}_retrain"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def _browser_or_skip() -> None:
    if shutil.which(CHROMIUM) is None or not Path(CHROMIUM).exists():
        message = f"Debian's chromium is not installed ({CHROMIUM}); apt-get install chromium"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)


@pytest.mark.browser
def test_operator_triggers_a_run_from_the_form_and_sees_it_succeed(
    running_stack: RunningStack,
) -> None:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    stack = running_stack.stack
    known = {run["dag_run_id"] for run in running_stack.runs(RETRAIN)}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{stack.url}/auth/login")
            page.get_by_label("Username").fill("operator")
            page.get_by_label("Password").fill(stack.password("operator"))
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)

            page.goto(f"{stack.url}/dags/{RETRAIN}")
            # the DAG's doc_md says what it does, what triggers it and what the params mean
            page.get_by_role("button", name="Dag Docs").click()
            page.get_by_text("Turns fresh data into a better model").first.wait_for(timeout=30_000)
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.locator("[role=dialog][data-state=open]")
            dialog.get_by_role("spinbutton").fill("21")
            dialog.locator("input[name=element_reason]").fill("browser test: dry run from the form")
            dialog.locator("[id='switch:element_dry_run']").click()
            submit = dialog.get_by_test_id("trigger-dag-submit")
            wait_for("the trigger button to enable", submit.is_enabled, timeout=20, interval=0.5)
            submit.click()

            run = running_stack.wait_new_run(RETRAIN, known, "manual", timeout=60)
            assert run["conf"] == {
                "window_days": 21,
                "end_date": None,
                "dry_run": True,
                "reason": "browser test: dry run from the form",
            }
            finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
            assert finished["state"] == "success"

            page.goto(f"{stack.url}/dags/{RETRAIN}/runs/{run['dag_run_id']}")
            page.get_by_text("success").first.wait_for(timeout=30_000)
            # the train task links to the MLflow run and the model version (the task
            # instance's Details tab lists the extra links)
            page.goto(f"{stack.url}/dags/{RETRAIN}/runs/{run['dag_run_id']}/tasks/train")
            page.get_by_text("Details", exact=True).first.click()
            page.get_by_role("link", name="MLflow run").wait_for(timeout=30_000)
            link = page.get_by_role("link", name="Model version")
            link.wait_for(timeout=30_000)
            version = registry.alias_version(MODEL, registry.CHALLENGER)
            assert (
                link.get_attribute("href")
                == f"{stack.mlflow_url}/#/models/{MODEL}/versions/{version}"
            )
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    tags = registry.version_info(MODEL, version).tags
    assert tags["decision"] == "dry_run" and tags["reason"] == "browser test: dry run from the form"


def test_the_evidently_report_link_is_served_by_the_mlflow_ui(running_stack: RunningStack) -> None:
    import urllib.request

    run = next(r for r in running_stack.runs(RETRAIN) if r["state"] == "success")
    body = running_stack.get(
        f"/api/v2/dags/{RETRAIN}/dagRuns/{run['dag_run_id']}/taskInstances/evaluate/links"
    )
    url = body["extra_links"]["Report (HTML)"]
    assert url.startswith(running_stack.stack.mlflow_url)
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode(errors="replace")
    assert response.status == 200 and "<html" in page.lower() and len(page) > 10_000


def test_rest_client_triggers_with_conf_and_reads_the_drift_asset(
    running_stack: RunningStack,
) -> None:
    from airflow_client.client import ApiClient, Configuration
    from airflow_client.client.api.asset_api import AssetApi
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    stack = running_stack.stack
    configuration = Configuration(host=stack.url, access_token=stack.token("operator"))
    with ApiClient(configuration) as client:
        runs = DagRunApi(client)
        created = runs.trigger_dag_run(
            RETRAIN,
            TriggerDAGRunPostBody(
                conf={"dry_run": True, "window_days": 14, "reason": "apache-airflow-client"}
            ),
        )
        state = wait_for(
            "the client-triggered run",
            lambda: (
                (s := runs.get_dag_run(RETRAIN, created.dag_run_id).state.value)
                in ("success", "failed")
                and s
            ),
            timeout=600,
            interval=3,
        )
        assert state == "success"
        assets = AssetApi(client)
        asset = next(
            a
            for a in assets.get_assets(name_pattern=f"drift://{MODEL}").assets
            if a.name == f"drift://{MODEL}"
        )
        events = assets.get_asset_events(
            asset_id=asset.id, order_by=["-timestamp"], limit=20
        ).asset_events
        assert events, "the drift asset has events (the event-driven tests raised some)"


def test_access_is_never_anonymous_and_operator_cannot_administer(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    for path in ("/api/v2/dags", f"/api/v2/dags/{RETRAIN}/dagRuns", "/api/v2/connections"):
        status, _ = stack.api("GET", path)
        assert status in (401, 403), path
    operator = stack.token("operator")
    status, _ = stack.api("GET", "/api/v2/connections", token=operator)
    assert status == 403
    status, _ = stack.api(
        "POST",
        "/api/v2/connections",
        {"connection_id": "sneaky", "conn_type": "http"},
        token=operator,
    )
    assert status == 403
    status, _ = stack.api("GET", f"/api/v2/dags/{RETRAIN}/dagRuns", token=operator)
    assert status == 200


def test_out_of_range_form_values_are_rejected_and_start_no_run(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    before = {run["dag_run_id"] for run in running_stack.runs(RETRAIN)}
    for conf, message in (
        ({"window_days": 2}, "2 is less than the minimum of 8"),
        ({"window_days": 1000}, "1000 is greater than the maximum of 365"),
        ({"dry_run": "maybe"}, "'maybe' is not of type 'boolean'"),
    ):
        status, body = stack.api(
            "POST",
            f"/api/v2/dags/{RETRAIN}/dagRuns",
            {"logical_date": None, "conf": conf},
            token=running_stack.token,
        )
        assert status == 400 and message in body["detail"], body
    assert {run["dag_run_id"] for run in running_stack.runs(RETRAIN)} == before
