"""A regression reaches a real Prefect server as an event, and the automation in
automations/model-regressed.yaml is accepted and notifies on it (loopback only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tasks.history.stages import REGRESSED_EVENT
from tests.support.servers import PREFECT, REPO
from tests.support.waiting import wait_until

AUTOMATION = REPO / "automations" / "model-regressed.yaml"
PLACEHOLDER = "YOUR-NOTIFICATION-BLOCK-ID"

# A notification block that posts to the test's own web server; prints the block's id.
MAKE_BLOCK = """
import sys
from prefect.blocks.notifications import CustomWebhookNotificationBlock

block = CustomWebhookNotificationBlock(
    name="regression-alerts", url=sys.argv[1],
    json_data={"subject": "{{subject}}", "body": "{{body}}"},
)
print(block.save("regression-alerts"))
"""

# A short process: a flow whose comparison finds svm regressed (0.900 -> 0.700), which
# exits as soon as the flow ends; its events must reach the server all the same.
REGRESSING_RUN = """
import sys
from pathlib import Path
from prefect import flow
from tasks.history.stages import since_previous_run_task
from tests.support.history_runs import Run, make_arrays

work = Path(sys.argv[1])
Run(work / "a", make_arrays()).evaluate("svm", 30).record(work / "reports", "run-a")
run = Run(work / "b", make_arrays()).evaluate("svm", 90)

@flow(name="regression-check")
def check():
    return since_previous_run_task(
        output_dir=work / "reports", profile="quick", run_id="run-b", raw=run.raw,
        data=run.data, evaluations=run.evaluations, regression_tolerance=0.01,
    )

print(check()["models"]["svm"]["regression"])
"""


@pytest.fixture
def webhook():
    """A local web server standing in for Slack and the like: yields its URL and the JSON
    bodies posted to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:  # keep the test's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_regression_event_reaches_the_server_and_notifies(tmp_path, webhook, prefect_server):
    url, received = webhook
    api, env = prefect_server.api, prefect_server.env
    try:

        def run(*command: str) -> str:
            done = subprocess.run(
                command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        block_id = run(sys.executable, "-c", MAKE_BLOCK, url).split()[-1]
        automation = tmp_path / AUTOMATION.name
        shutil.copy(AUTOMATION, automation)
        automation.write_text(automation.read_text().replace(PLACEHOLDER, block_id))
        created = run(
            PREFECT, "--no-prompt", "automation", "create", "--from-file", str(automation)
        )
        assert "Created automation 'fashion-mnist-model-regressed'" in created

        assert run(sys.executable, "-c", REGRESSING_RUN, str(tmp_path)).split()[-1] == "True"

        def regression_events() -> list[dict]:
            # The server is shared: this test's model is the only svm that regresses.
            events = {"name": [REGRESSED_EVENT]}
            resource = {"id": ["fashion-mnist.model.svm"]}
            query = {"filter": {"event": events, "resource": resource}, "limit": 10}
            return httpx.post(f"{api}/events/filter", json=query, timeout=5).json()["events"]

        (event,) = wait_until(regression_events, 60, "the regression event on the server")
        assert event["resource"]["prefect.resource.id"] == "fashion-mnist.model.svm"
        payload = event["payload"]
        assert (payload["model"], payload["previous_accuracy"], payload["accuracy"]) == (
            "svm", 0.9, 0.7
        )  # fmt: skip
        assert payload["p_value"] == pytest.approx(2 * 0.5**60)
        assert (payload["run_id"], payload["previous_run_id"]) == ("run-b", "run-a")
        # Emitted inside a task run: Prefect relates it to the flow run.
        assert "flow-run" in {related["prefect.resource.role"] for related in event["related"]}

        (notification,) = wait_until(lambda: received, 60, "the automation's notification")
        assert notification["subject"] == "Fashion-MNIST: svm regressed"
        assert notification["body"] == (
            "svm got worse in run run-b: test accuracy 0.900 → 0.700 "
            "(McNemar p = 1.7e-18), since run run-a."
        )
    finally:  # the server is shared: other tests' regressions are not this test's to notify
        prefect_server.cli("automation", "delete", "fashion-mnist-model-regressed")
