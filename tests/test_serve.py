"""The HTTP server, run as a user runs it (`python -m flows.serve` in a subprocess), on a
run of real models trained on tiny synthetic IDX files."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import httpx
import numpy as np
import pandas as pd
import pytest

from flows.predict import main as predict_main
from flows.serve import parse_args
from tasks.core.contracts import CLASS_NAMES
from tasks.evaluation.report.writer import point_latest_at
from tasks.predict.inputs import read_idx_images
from tests.support.data import REAL_DATA_DIR
from tests.support.predict_run import make_run
from tests.support.servers import REPO
from tests.support.serving import huge_png, metric_samples, png_bytes, post_files, serving
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(report directory, the synthetic arrays) of a run of two models and their ensemble."""
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(run):
    report_dir, _ = run
    with serving(report_dir.parents[1], "--run", "reports/latest", "--batch-wait-ms", "20",
                 "--poll-seconds", "0") as s:  # fmt: skip
        yield s


def test_files_and_instances_get_the_classes_and_probabilities_of_flows_predict(
    run, server, tmp_path
):
    report_dir, arrays = run
    images = arrays["test_images"][:40]
    folder = tmp_path / "pngs"
    folder.mkdir()
    files = {f"{i:02d}.png": png_bytes(image) for i, image in enumerate(images)}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    assert predict_main([str(folder), "--run", str(report_dir), "--output",
                         str(tmp_path / "p.csv"), "--top-k", "3"]) == 0  # fmt: skip
    expected = pd.read_csv(tmp_path / "p.csv")

    by_file = post_files(server.url, files)
    by_pixels = httpx.post(
        f"{server.url}/predict", json={"instances": images.tolist()}, timeout=60
    )  # 28 x 28 lists
    # The pipeline's features, as a float .npy gives them to flows.predict: not 255 times darker.
    scaled = (images.reshape(len(images), -1) / np.float32(255)).astype(np.float32)
    by_features = httpx.post(
        f"{server.url}/predict", json={"instances": scaled.tolist()}, timeout=60
    )

    assert by_file.status_code == by_pixels.status_code == by_features.status_code == 200
    for answer in (by_file.json(), by_pixels.json(), by_features.json()):
        assert (answer["model"], answer["run"]) == (expected_model(report_dir), "run-1")
        got = answer["predictions"]
        assert [p["predicted_class"] for p in got] == expected.predicted_class.tolist()
        assert [p["predicted_label"] for p in got] == expected.predicted_label.tolist()
        np.testing.assert_allclose([p["probability"] for p in got], expected.probability, atol=5e-7)
        second = [p["top_k"][1] for p in got]
        assert [s["class"] for s in second] == expected.top2_class.tolist()
        np.testing.assert_allclose([s["probability"] for s in second], expected.top2_probability,
                                   atol=5e-7)  # fmt: skip
    assert [p["input"] for p in by_file.json()["predictions"]] == list(files)
    assert [p["input"] for p in by_pixels.json()["predictions"]] == [str(i) for i in range(40)]


def expected_model(report_dir) -> str:
    return json.loads((report_dir / "metrics.json").read_text())["chosen_model"]


def test_top_k_sets_the_classes_listed(run, server):
    _, arrays = run
    answer = post_files(server.url, {"a.png": png_bytes(arrays["test_images"][0])}, top_k=10)
    ranked = answer.json()["predictions"][0]["top_k"]
    assert sorted(r["class"] for r in ranked) == sorted(CLASS_NAMES)
    probabilities = [r["probability"] for r in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    refused = post_files(server.url, {"a.png": png_bytes(arrays["test_images"][0])}, top_k=11)
    assert refused.status_code == 422
    assert refused.json()["detail"] == "top_k 11 is out of range: expected 1 to 10"


def truncated_png(arrays) -> bytes:
    whole = png_bytes((arrays["test_images"][0] // 2 + 100).astype(np.uint8))
    return whole[: len(whole) // 2]


BAD_REQUESTS = {  # name: (request keyword arguments, status, the reason's start)
    "empty body": (dict(content=b"", headers={"content-type": "application/json"}), 422,
                   "not valid JSON"),
    "JSON nested past Python's limit": (dict(content=b"[" * 100_000,
                                             headers={"content-type": "application/json"}),
                                        422, "not valid JSON: maximum recursion depth"),
    "no content type": (dict(content=b"x"), 415, "no content type: expected multipart"),
    "an empty form": (dict(data={"other": "1"}, files={"x": ("x", b"")}), 422,
                      "no files: send images in the multipart field `files`"),
    "declared over the limit": (dict(content=b"x" * 2_100_000,
                                     headers={"content-type": "application/json"}),
                                413, "request body of 2,100,000 bytes refused: the limit is 2 MB"),
    "streamed over the limit": (dict(content=iter([b"x" * 500_000] * 5),
                                     headers={"content-type": "application/json"}),
                                413, "request body refused after 2,"),
    "JSON not an object": (dict(json=[1, 2]), 422,
                           'expected a JSON object {"instances": [...]}'),
    "no instances": (dict(json={"instances": []}), 422, "expected a JSON object"),
}  # fmt: skip


@pytest.fixture(scope="module")
def small_limits(run):
    report_dir, _ = run
    with serving(report_dir.parents[1], "--run", "reports/latest", "--max-request-mb", "2",
                 "--max-image-megapixels", "1") as s:  # fmt: skip
        yield s


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_malformed_request_gets_its_status_and_one_reason(small_limits, name):
    request, status, reason = BAD_REQUESTS[name]
    answer = httpx.post(f"{small_limits.url}/predict", timeout=60, **request)
    assert answer.status_code == status
    assert answer.json()["detail"].startswith(reason), answer.json()
    assert httpx.get(f"{small_limits.url}/health").json()["status"] == "serving"


def test_each_unreadable_input_gets_its_reason_and_the_others_are_classified(run, small_limits):
    _, arrays = run
    good = png_bytes(arrays["test_images"][0])
    files = {"good.png": good, "empty.png": b"", "text.png": b"not an image at all",
             "truncated.png": truncated_png(arrays), "bomb.png": huge_png(20_000, 20_000),
             "large.png": huge_png(1_500, 1_000)}  # fmt: skip
    answer = post_files(small_limits.url, files).json()["predictions"]
    errors = {p["input"]: p["error"] for p in answer}
    assert errors["good.png"] is None
    assert answer[0]["predicted_class"] in CLASS_NAMES
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert errors["text.png"] == "not an image: Pillow recognises no image format in it"
    assert errors["truncated.png"].startswith("unreadable image (truncated or corrupt)")
    assert errors["bomb.png"].startswith("too large, refused before decoding it: Image size "
                                         "(400000000 pixels) exceeds limit")  # fmt: skip
    assert errors["large.png"] == ("image of 1,500 x 1,000 pixels is over the limit of "
                                   "1,000,000 pixels; refused before decoding it")  # fmt: skip
    for bad in ("empty.png", "bomb.png"):
        row = next(p for p in answer if p["input"] == bad)
        assert (row["predicted_class"], row["probability"], row["top_k"]) == (None, None, [])

    alone = post_files(small_limits.url, {k: v for k, v in files.items() if k != "good.png"})
    assert alone.status_code == 422
    assert alone.json()["detail"] == "no readable input"
    assert [e["input"] for e in alone.json()["errors"]] == [k for k in files if k != "good.png"]


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        ([1, 2, 3], "shape (3,); expected 28 x 28 or 784 pixel values"),
        ([[0] * 28] * 27, "shape (27, 28); expected 28 x 28 or 784 pixel values"),
        ([[0] * 28, [0] * 3], "rows of different lengths; expected 28 x 28 or 784 values"),
        ([-1] + [0] * 783, "values from -1 to 0; expected pixels in 0-255"),
        ([0] * 783 + [256.5], "values from 0 to 256.5; expected pixels in 0-255"),
        (["a"] * 784, "values that are not numbers (text)"),
        (7, "a single number; expected 28 x 28 or 784 pixel values"),
    ],
)
def test_a_bad_instance_gets_its_reason_beside_the_good_ones(server, instance, reason):
    answer = httpx.post(f"{server.url}/predict", json={"instances": [[0] * 784, instance]})
    assert answer.status_code == 200
    good, bad = answer.json()["predictions"]
    assert (good["error"], bad["error"], bad["input"]) == (None, reason, "1")


def test_health_and_the_model_card_name_what_is_served(run, server):
    report_dir, _ = run
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "serving"
    assert (health["run"], health["model"], health["refused"]) == ("run-1", expected_model(
        report_dir), None)  # fmt: skip
    card = httpx.get(f"{server.url}/model").json()
    board = pd.read_csv(report_dir / "leaderboard.csv").set_index("model")
    best = board.loc[card["model"]]
    assert card["classes"] == list(CLASS_NAMES)
    assert card["test_accuracy"] == pytest.approx(best.test_accuracy)
    assert card["test_accuracy_interval"] == pytest.approx([best.accuracy_low, best.accuracy_high])
    assert card["model_files_sha256"]
    assert all(len(digest) == 64 for digest in card["model_files_sha256"].values())


def test_concurrent_requests_are_classified_together(run, server):
    _, arrays = run
    before = metric_samples(server.url)
    pngs = [png_bytes(image) for image in arrays["test_images"][:32]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda png: post_files(server.url, {"x.png": png}), pngs))
    assert {a.status_code for a in answers} == {200}
    after = metric_samples(server.url)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert grew("fashion_mnist_batch_images_sum") == 32
    assert grew("fashion_mnist_batch_images_count") < 32  # fewer model calls than requests
    assert grew("fashion_mnist_requests_total", path="/predict", status="200") == 32
    assert grew("fashion_mnist_inputs_total", outcome="classified") == 32
    assert grew("fashion_mnist_request_seconds_count", path="/predict") == 32


def test_with_batching_off_each_request_gets_a_model_call_of_its_own(run):
    report_dir, arrays = run
    with serving(report_dir.parents[1], "--run", "reports/latest", "--max-batch-images", "1") as s:
        pngs = [png_bytes(image) for image in arrays["test_images"][:12]]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert {a.status_code for a in pool.map(lambda p: post_files(s.url, {"x": p}), pngs)
                    } == {200}  # fmt: skip
        samples = metric_samples(s.url)
    assert samples[("fashion_mnist_batch_images_count", ())] == 12
    assert samples[("fashion_mnist_batch_images_sum", ())] == 12


def test_a_token_is_required_when_set_and_beyond_loopback(run, monkeypatch, capsys):
    report_dir, arrays = run
    with serving(report_dir.parents[1], "--run", "reports/latest",
                 env={"FASHION_MNIST_SERVE_TOKEN": "s3cret"}) as s:  # fmt: skip
        png = {"a.png": png_bytes(arrays["test_images"][0])}
        missing = post_files(s.url, png)
        wrong = httpx.post(f"{s.url}/predict", headers={"Authorization": "Bearer nope"})
        right = httpx.post(f"{s.url}/predict", headers={"Authorization": "Bearer s3cret"},
                           files=[("files", ("a.png", png["a.png"]))])  # fmt: skip
        metrics_without = httpx.get(f"{s.url}/metrics")
        assert httpx.get(f"{s.url}/health").status_code == 200  # probes carry no token
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert metrics_without.status_code == 401
    assert missing.json()["detail"].startswith("a bearer token is required")
    assert wrong.json()["detail"].startswith("the bearer token is wrong")
    assert missing.headers["www-authenticate"].startswith("Bearer")

    monkeypatch.delenv("FASHION_MNIST_SERVE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--host", "0.0.0.0"])
    assert exited.value.code == 2
    assert "binding 0.0.0.0 exposes the model beyond this machine" in capsys.readouterr().err
    monkeypatch.setenv("FASHION_MNIST_SERVE_TOKEN", "s3cret")
    assert parse_args(["--host", "0.0.0.0"]).token == "s3cret"
    with pytest.raises(SystemExit) as exited:
        parse_args(["--host", "0.0.0.0", "--token", "clé"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: the bearer token must be ASCII: clients put other characters in a header "
        "in different encodings (see python -m flows.serve --help)\n"
    )


def test_no_model_to_serve_exits_1_in_one_line(tmp_path):
    ended = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--run", "nowhere"], cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (ended.returncode, ended.stdout) == (1, "")
    assert ended.stderr.splitlines() == [
        "error: nowhere: no run found; train one with `python -m flows.full_pipeline` or "
        "name a run's report directory with --run"
    ]


def copy_run(report_dir, run_id: str, broken: bool = False):
    """A second run beside `report_dir`, with the same models; `broken`: its best model's
    saved file changed after its manifest was written."""
    new = report_dir.with_name(run_id)
    shutil.copytree(report_dir, new)
    metrics = json.loads((new / "metrics.json").read_text())
    metrics["run_id"] = run_id
    if broken:
        best = expected_model(report_dir)
        members = metrics["models"][best]["params"].get("members", [best])
        entry = report_dir.parents[1] / metrics["models"][members[0]]["model_dir"]
        copy = entry.with_name(entry.name + "-broken")
        shutil.copytree(entry, copy)
        saved = next(copy.glob("model.*"))
        saved.write_bytes(saved.read_bytes()[:-1] + b"!")
        metrics["models"][members[0]]["model_dir"] = str(copy.relative_to(report_dir.parents[1]))
    (new / "metrics.json").write_text(json.dumps(metrics))
    return new


def test_a_newer_run_is_served_under_load_and_a_broken_one_refused(run, tmp_path):
    shutil.copytree(run[0].parents[1], tmp_path / "root", symlinks=True)  # runs of its own
    report_dir, arrays = tmp_path / "root" / "reports" / "run-1", run[1]
    png = {"a.png": png_bytes(arrays["test_images"][0])}
    with serving(report_dir.parents[1], "--run", "reports/latest", "--poll-seconds", "0.2") as s:
        answers, stop = [], threading.Event()

        def keep_asking():
            while not stop.is_set():
                answers.append(post_files(s.url, png))

        clients = [threading.Thread(target=keep_asking) for _ in range(4)]
        for client in clients:
            client.start()
        try:
            wait_until(lambda: len(answers) >= 8, 60, "answers from run-1")
            point_latest_at(copy_run(report_dir, "run-2"))
            wait_until(lambda: httpx.get(f"{s.url}/health").json()["run"] == "run-2", 60,
                       "the switch to run-2")  # fmt: skip
            wait_until(lambda: any(a.json()["run"] == "run-2" for a in answers[-4:]), 60,
                       "answers from run-2")  # fmt: skip
            broken = copy_run(report_dir, "run-3", broken=True)
            point_latest_at(broken)
            health = wait_until(
                lambda: (h := httpx.get(f"{s.url}/health").json())["refused"] and h,
                60,
                "the refusal of run-3",
            )
            after_refusal = len(answers)
            wait_until(lambda: len(answers) > after_refusal + 8, 60, "answers after the refusal")
        finally:
            stop.set()
            for client in clients:
                client.join()
        samples = metric_samples(s.url)
    assert {a.status_code for a in answers} == {200}
    runs = [a.json()["run"] for a in answers]
    assert (runs[0], runs[-1], set(runs)) == ("run-1", "run-2", {"run-1", "run-2"})
    assert health["run"] == "run-2"
    assert health["refused"]["run_dir"] == str(broken)
    assert "manifest check" in health["refused"]["reason"]
    assert samples[("fashion_mnist_model_switches_total", (("outcome", "switched"),))] == 1
    assert samples[("fashion_mnist_model_switches_total", (("outcome", "refused"),))] == 1
    assert "refused the model of run run-3" in s.output()


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(run):
    report_dir, arrays = run
    png = {"a.png": png_bytes(arrays["test_images"][0])}
    with serving(report_dir.parents[1], "--run", "reports/latest", "--batch-wait-ms", "3000",
                 "--max-batch-images", "64") as s:  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post_files, s.url, png)
            wait_until(lambda: metric_samples(s.url).get(
                ("fashion_mnist_requests_in_flight", (("path", "/predict"),))) == 1, 30,
                "the request to be in flight")  # fmt: skip
            s.process.send_signal(signal.SIGTERM)
            answer = in_flight.result(timeout=60)
        assert s.process.wait(timeout=60) == 0
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["predicted_class"] in CLASS_NAMES
    assert "Shutting down" in s.output()


@pytest.mark.slow
@pytest.mark.xdist_group("quick-run")
def test_served_predictions_match_flows_predict_on_1000_real_test_pngs(quick_run, tmp_path):
    workdir, report_dir, _ = quick_run
    board = pd.read_csv(report_dir / "leaderboard.csv").dropna(subset=["rank"])
    ranked = board.sort_values("rank").model.tolist()
    images = read_idx_images(REAL_DATA_DIR / "t10k-images-idx3-ubyte.gz", compressed=True)
    folder = tmp_path / "pngs"
    folder.mkdir()
    files = {f"{i:04d}.png": png_bytes(image) for i, image in enumerate(images[:1000])}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    names = list(files)
    for model in (ranked[0], ranked[-1]):  # the best and the last-ranked
        output = tmp_path / f"{model}.csv"
        with contextlib.chdir(workdir):
            assert predict_main([str(folder), "--run", str(report_dir), "--model", model,
                                 "--output", str(output)]) == 0  # fmt: skip
        expected = pd.read_csv(output)
        with serving(workdir, "--run", str(report_dir), "--model", model) as s:
            answers = []
            for start in range(0, 1000, 100):
                chunk = {name: files[name] for name in names[start : start + 100]}
                answer = post_files(s.url, chunk)
                assert answer.status_code == 200
                assert answer.json()["model"] == model
                answers += answer.json()["predictions"]
        assert [a["input"] for a in answers] == names
        assert [a["predicted_class"] for a in answers] == expected.predicted_class.tolist()
        # Batches of 100 here, of 1,000 there: a float32 matrix product (logistic
        # regression's) rounds by batch size, up to 5e-6 on these images.
        np.testing.assert_allclose(
            [a["probability"] for a in answers], expected.probability, atol=1e-5
        )
