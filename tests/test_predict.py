"""Batch prediction with a run's models: loading, batching, the CSV, and the command line."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tasks.core.files
import tasks.predict.batch
import tasks.predict.model
from flows.predict import main
from tasks.core.contracts import CLASS_NAMES
from tasks.core.storage import sha256_file
from tasks.predict.batch import classify, csv_header, predict_images
from tasks.predict.inputs import InputImages
from tests.support.predict_run import RUN_ID, TEST_IMAGES, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(report directory, the synthetic arrays) of a run of two models and their ensemble."""
    return make_run(tmp_path_factory.mktemp("predict"))


def save_pngs(folder: Path, images: np.ndarray, prefix: str = "") -> Path:
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}{i}.png")
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", ["logistic_regression", "random_forest", "ensemble"])
def test_predicting_the_test_file_gives_the_runs_own_predictions(run, tmp_path, capsys, model):
    report_dir, _ = run
    images = report_dir.parents[1] / "idx" / TEST_IMAGES
    code, _, err = run_cli(capsys, images, "--run", report_dir, "--model", model,
                           "--output", tmp_path / "p.csv", "--top-k", 10)  # fmt: skip
    assert (code, err) == (0, "")
    rows = pd.read_csv(tmp_path / "p.csv")
    stored = pd.read_csv(report_dir / "test_predictions.csv")
    assert rows.path.tolist() == [f"{images}[{i}]" for i in range(len(stored))]
    order = stored["index"].to_numpy()
    np.testing.assert_array_equal(rows.predicted_label.to_numpy()[order], stored[model])
    with np.load(report_dir / "test_probabilities.npz") as probabilities:
        expected = -np.sort(-probabilities[model], axis=1)  # most probable first
    mine = rows[[f"top{k}_probability" for k in range(1, 11)]].to_numpy()[order]
    np.testing.assert_allclose(mine, expected, atol=5e-7)  # the CSV's 6 decimals


def test_the_default_model_is_the_runs_choice_and_the_output_names_it(run, tmp_path, capsys):
    report_dir, arrays = run
    folder = save_pngs(tmp_path / "images", arrays["test_images"][:4])
    code, out, _ = run_cli(capsys, folder, "--run", report_dir, "--output", tmp_path / "p.csv")
    board = pd.read_csv(report_dir / "leaderboard.csv").set_index("model")
    chosen = json.loads((report_dir / "metrics.json").read_text())["chosen_model"]
    provenance = json.loads((tmp_path / "p.provenance.json").read_text())
    assert code == 0
    assert board.selection_accuracy[chosen] == board.selection_accuracy.max()
    assert (provenance["run_id"], provenance["model"]) == (RUN_ID, chosen)
    assert provenance["test_accuracy"] == pytest.approx(board.test_accuracy[chosen])
    assert provenance["predictions_sha256"] == sha256_file(tmp_path / "p.csv")
    files = provenance["model_files_sha256"]
    assert files
    assert all(sha256_file(Path(f)) == digest for f, digest in files.items())
    assert all(f"{path}  sha256 {digest}" in out for path, digest in files.items())
    assert f"model {chosen} of run {RUN_ID} (rank {board['rank'][chosen]}, test accuracy" in out
    assert "classified 4 images in" in out
    assert "  unreadable         0" in out
    predicted = pd.read_csv(tmp_path / "p.csv").predicted_class.value_counts()
    assert all(f"  {name:<12} {count:>7,}" in out for name, count in predicted.items())


def test_a_run_from_before_it_recorded_its_choice_gives_its_first_ranked(run):
    report_dir, _ = run
    older = report_dir.with_name("run-before-choices")  # beside it: its models' paths hold
    shutil.copytree(report_dir, older)
    try:
        metrics = json.loads((older / "metrics.json").read_text())
        del metrics["chosen_model"]
        (older / "metrics.json").write_text(json.dumps(metrics))
        first = pd.read_csv(older / "leaderboard.csv").model[0]
        assert first != json.loads((report_dir / "metrics.json").read_text())["chosen_model"]
        assert tasks.predict.model.load_run_model(older, None, threads=1).name == first
    finally:
        shutil.rmtree(older)


def test_top_k_columns_list_the_most_probable_classes_first(run, tmp_path):
    report_dir, arrays = run
    np.save(tmp_path / "x.npy", arrays["test_images"][:20])
    summary = predict_images([tmp_path / "x.npy"], report_dir, output=tmp_path / "p.csv", top_k=2)
    rows = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert rows.columns.tolist() == csv_header(2) == [
        "path", "predicted_class", "predicted_label", "probability", "top1_class",
        "top1_probability", "top2_class", "top2_probability", "error",
    ]  # fmt: skip
    assert (rows.top1_class == rows.predicted_class).all()
    assert (rows.top1_probability == rows.probability).all()
    assert (rows.top1_probability >= rows.top2_probability).all()
    assert (rows.top1_class != rows.top2_class).all()
    assert [CLASS_NAMES[label] for label in rows.predicted_label] == rows.predicted_class.tolist()
    assert (rows.error == "").all()
    assert summary.images == 20
    assert not summary.unreadable


def test_bad_files_get_a_row_with_the_reason_and_the_rest_are_classified(run, tmp_path, capsys):
    report_dir, arrays = run
    folder = save_pngs(tmp_path / "mixed", arrays["test_images"][:3], prefix="good-")
    whole = (folder / "good-0.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello\n")
    code, out, _ = run_cli(capsys, folder, "--run", report_dir, "--output", tmp_path / "p.csv")
    rows = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("path")
    assert code == 3
    good = [str(folder / f"good-{i}.png") for i in range(3)]
    assert (rows.loc[good, "error"] == "").all()
    assert (rows.loc[good, "predicted_class"] != "").all()
    assert rows.error.drop(good).to_dict() == {
        str(folder / "cut.png"): "unreadable image (truncated or corrupt): image file is truncated",
        str(folder / "empty.png"): "empty file (0 bytes)",
        str(folder / "text.png"): "not an image: Pillow recognises no image format in it",
    }
    assert (
        (rows.drop(good)[["predicted_class", "predicted_label", "probability"]] == "")
        .to_numpy()
        .all()
    )
    assert "  unreadable         3" in out
    assert f"unreadable: {folder / 'empty.png'}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/x.npy", "--run", "{tmp}/nothing"], "error: {tmp}/nothing: no run found; train "
         "one with `python -m flows.full_pipeline` or name a run's report directory with --run"),
        (["{tmp}/x.npy", "--run", "{run}", "--model", "svm_rbf"],
         "error: unknown model 'svm_rbf'; run run-1 has: "),
        (["{tmp}/empty", "--run", "{run}"],
         "error: no inputs: {tmp}/empty holds no image or array files"),
        (["{tmp}/missing.png", "--run", "{run}"],
         "error: {tmp}/missing.png: no such file or directory"),
        (["{tmp}/x.npy", "--run", "{run}", "--top-k", "11"],
         "error: top-k 11 is out of range: run run-1 has 10 classes; expected 1 to 10"),
    ],
    ids=["no-run", "unknown-model", "no-inputs", "missing-path", "top-k-beyond-the-runs-classes"],
)  # fmt: skip
def test_errors_before_predicting_exit_1_with_one_line(run, tmp_path, capsys, argv, message):
    report_dir, arrays = run
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    argv = [a.format(tmp=tmp_path, run=report_dir) for a in argv]
    code, out, err = run_cli(capsys, *argv, "--output", tmp_path / "p.csv")
    assert (code, out) == (1, "")
    assert err.startswith(message.format(tmp=tmp_path)), err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "error: the following arguments are required: PATH"),
     (["x.png", "--top-k", "101"],
      "error: argument --top-k: '101' is not a number from 1 to 100")],
    ids=["no-path", "top-k"],
)  # fmt: skip
def test_a_malformed_command_line_exits_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1, err


def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(
    run, tmp_path, capsys, monkeypatch
):
    report_dir, arrays = run
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    monkeypatch.setattr(tasks.predict.model, "load_model", lambda *_: pytest.fail("loaded"))
    code, out, err = run_cli(capsys, tmp_path / "x.npy", "--run", report_dir, "--output", tmp_path)
    assert (code, out, err) == (
        1,
        "",
        f"error: {tmp_path}: is a directory, not the CSV file to write\n",
    )
    inside_a_file = tmp_path / "x.npy" / "p.csv"
    code, out, err = run_cli(
        capsys, tmp_path / "x.npy", "--run", report_dir, "--output", inside_a_file
    )
    assert (code, out, err) == (2, "", f"error: {tmp_path / 'x.npy'}: is a file, not a directory\n")


def test_a_csv_the_disk_has_no_room_for_is_one_line_and_the_earlier_one_stays(
    run, tmp_path, capsys, monkeypatch
):
    report_dir, arrays = run
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    (tmp_path / "p.csv").write_text("an earlier prediction\n")

    def full_disk(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tasks.core.files, "flush_to_disk", full_disk)
    argv = (tmp_path / "x.npy", "--run", report_dir, "--output", tmp_path / "p.csv")
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (1, "")
    assert err == f"error: {tmp_path / 'p.csv'}: no space left on device\n"
    assert (tmp_path / "p.csv").read_text() == "an earlier prediction\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.csv", "x.npy"]


def altered_model_copy(report_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run's directory whose logistic regression file has a byte more: the
    copy, and that model's cache entry in it."""
    copy = tmp_path / "copy"
    shutil.copytree(report_dir.parents[1], copy, symlinks=True)
    (entry,) = (copy / "data" / "models" / "logistic_regression").iterdir()
    with open(entry / "model.joblib", "ab") as stream:
        stream.write(b"\0")
    return copy, entry


def test_a_model_file_failing_its_manifest_is_refused_in_one_line(run, tmp_path, capsys):
    report_dir, arrays = run
    copy, entry = altered_model_copy(report_dir, tmp_path)
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    for model in ("logistic_regression", "ensemble"):  # the ensemble has it as a member
        code, out, err = run_cli(capsys, tmp_path / "x.npy", "--run", copy / "reports" / RUN_ID,
                                 "--model", model, "--output", tmp_path / "p.csv")  # fmt: skip
        assert (code, out) == (1, "")
        assert err == (
            f"error: {entry}: refusing the saved logistic_regression model: "
            "model.joblib does not match its recorded hash (manifest check)\n"
        )
    assert not (tmp_path / "p.csv").exists()


def test_a_model_retrained_since_the_run_is_refused_in_one_line(run, tmp_path, capsys):
    """A later run with --refresh replaces the cache entry the run recorded, consistent
    with its own manifest: the run's figures are not the new model's."""
    report_dir, arrays = run
    copy, entry = altered_model_copy(report_dir, tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["model.joblib"] = sha256_file(entry / "model.joblib")
    (entry / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    run_dir = copy / "reports" / RUN_ID
    argv = (tmp_path / "x.npy", "--run", run_dir, "--output", tmp_path / "p.csv")
    for model in ("logistic_regression", "ensemble"):
        code, out, err = run_cli(capsys, *argv, "--model", model)
        assert (code, out) == (1, "")
        assert err == (
            f"error: {entry}: refusing the saved logistic_regression model: it is not the one "
            f"run {RUN_ID} evaluated (retrained since, by a run with --refresh or a rebuilt "
            "cache entry); the run that retrained it can predict with it\n"
        )
    code, _, err = run_cli(capsys, *argv, "--model", "random_forest")  # its entry unchanged
    assert (code, err) == (0, "")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for record in metrics["models"].values():  # a run from before the hashes were recorded
        del record["model_files_sha256"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert run_cli(capsys, *argv, "--model", "logistic_regression")[0] == 0


def test_a_model_that_failed_in_the_run_is_refused_with_its_error(run, tmp_path, capsys):
    report_dir, arrays = run
    copy = tmp_path / "reports" / "run-2"
    shutil.copytree(report_dir, copy)
    board = pd.read_csv(copy / "leaderboard.csv")
    failed = {"model": "cnn", "error": "failed in training: MemoryError: out of memory"}
    with_failure = pd.concat([board.assign(error=""), pd.DataFrame([failed])])
    with_failure.astype({"rank": "Int64"}).to_csv(copy / "leaderboard.csv", index=False)
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    code, out, err = run_cli(capsys, tmp_path / "x.npy", "--run", copy, "--model", "cnn")
    assert (code, out) == (1, "")
    assert err == (
        "error: 'cnn' failed in training: MemoryError: out of memory; "
        f"run {RUN_ID} has: {', '.join(board.model)}\n"
    )


def test_model_entries_are_found_from_the_current_directory_first(run, tmp_path, monkeypatch):
    report_dir, arrays = run
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    monkeypatch.chdir(report_dir.parents[1])  # where the run was started: the recorded path
    summary = predict_images([tmp_path / "x.npy"], Path("reports/latest"), "random_forest",
                             tmp_path / "p.csv")  # fmt: skip
    (recorded,) = summary.provenance["model_files_sha256"]
    assert recorded.startswith("data/models/random_forest/")
    monkeypatch.chdir(tmp_path)  # elsewhere: beside the run's output directory
    summary = predict_images([tmp_path / "x.npy"], report_dir, "random_forest", tmp_path / "p.csv")
    assert list(summary.provenance["model_files_sha256"]) == [str(report_dir.parents[1] / recorded)]


def test_a_run_landing_while_predicting_does_not_mix_two_runs(run, tmp_path, monkeypatch):
    report_dir, arrays = run
    np.save(tmp_path / "x.npy", arrays["test_images"][:2])
    latest = tmp_path / "latest"
    latest.symlink_to(report_dir, target_is_directory=True)
    landing = tmp_path / "run-2"
    landing.mkdir()  # the next run, its report still being written
    real_read_run = tasks.predict.batch.read_run

    def read_then_land(run_dir):
        found = real_read_run(run_dir)
        moved = tmp_path / "moved"  # the link swapped in one rename, as the pipeline does
        moved.symlink_to(landing, target_is_directory=True)
        moved.replace(latest)
        return found

    monkeypatch.setattr(tasks.predict.batch, "read_run", read_then_land)
    summary = predict_images([tmp_path / "x.npy"], latest, "random_forest", tmp_path / "p.csv")
    assert latest.resolve() == landing  # it moved, and the prediction kept to the first run
    assert (summary.provenance["run_id"], summary.provenance["run_dir"]) == (
        RUN_ID, str(report_dir.resolve())
    )  # fmt: skip


def test_the_model_is_loaded_once_and_predicts_in_batches(run, tmp_path, monkeypatch):
    report_dir, arrays = run
    loaded = []
    real_load = tasks.predict.model.load_model
    monkeypatch.setattr(tasks.predict.model, "load_model",
                        lambda d, threads: loaded.append(d) or real_load(d, threads))  # fmt: skip
    np.save(tmp_path / "x.npy", arrays["test_images"])
    summary = predict_images([tmp_path / "x.npy"], report_dir, "ensemble", tmp_path / "p.csv",
                             batch_size=16)  # fmt: skip
    assert summary.images == len(arrays["test_images"]) > 16 * 5
    assert len(loaded) == 2  # the ensemble's two members, once each


def test_batches_keep_the_input_order_around_unreadable_inputs():
    rng = np.random.default_rng(0)
    blocks = [
        InputImages("a.npy", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), indexed=True),
        InputImages("bad.png", error="empty file (0 bytes)"),
        InputImages("b.png", rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)),
        InputImages("c.npy", rng.random((4, 784), dtype=np.float32), indexed=True),
    ]
    sizes = []

    def mean_pixel(features):  # a "model" whose answer identifies the image
        sizes.append(len(features))
        return np.repeat(features.mean(axis=1, keepdims=True), 10, axis=1)

    in_batches_of_3 = list(classify(blocks, mean_pixel, batch_size=3))
    at_once = list(classify(blocks, mean_pixel, batch_size=100))
    assert sizes == [3, 3, 3, 1, 10]
    names = [name for name, _, _ in in_batches_of_3]
    assert names == ["a.npy[0]", "a.npy[1]", "a.npy[2]", "a.npy[3]", "a.npy[4]", "bad.png",
                     "b.png", "c.npy[0]", "c.npy[1]", "c.npy[2]", "c.npy[3]"]  # fmt: skip
    assert [n for n, _, _ in at_once] == names
    for (_, small, error), (_, large, _) in zip(in_batches_of_3, at_once, strict=True):
        assert (small is None) == (large is None) == bool(error)
        if small is not None:
            np.testing.assert_array_equal(small, large)
