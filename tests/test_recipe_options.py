"""The recipe options benchmark: its learning rates, its erased squares, and each option
trained for an epoch on the synthetic split."""

import argparse
import math
import os

import numpy as np
import pytest

from benchmarks.recipe_options import (
    DEFAULT_SEED,
    OPTIONS,
    Trial,
    erase_squares,
    option_batches,
    option_network,
    parsed_in_process,
    run_option,
    train_option,
)
from tasks.core.contracts import SPLIT_ARRAYS
from tasks.training.models.keras_training import batch_count


@pytest.mark.parametrize(
    ("name", "peak", "warmup_epochs"),
    [("as it is", 2e-3, 0), ("a warm-up epoch to rate 4e-3", 4e-3, 1)],
)
def test_an_option_trains_with_the_products_warm_up_and_cosine_decay(
    name, peak, warmup_epochs, processed
):
    trial = Trial(name, epochs=2)
    trained, _ = train_option(trial, processed)
    steps = batch_count(len(processed.load(*SPLIT_ARRAYS["train"])[1]), trial.params().batch_size)
    # The last batch's rate: the decay's, over the steps of the epochs after the warm-up.
    decaying = (2 - warmup_epochs) * steps
    last = 0.5 * peak * (1 + math.cos(math.pi * (decaying - 1) / decaying))
    assert float(trained.model.optimizer.learning_rate) == pytest.approx(last, rel=1e-5)


def test_half_the_images_lose_a_square_of_background_and_the_input_is_untouched():
    images = np.ones((2000, 28, 28, 1), np.float32)
    erased = erase_squares(images, 8, np.random.default_rng(0))
    assert images.min() == 1.0
    zeros = (erased == 0).sum(axis=(1, 2, 3))
    assert 900 < np.count_nonzero(zeros) < 1100
    # A square whole inside the image has 64 pixels; the edge cuts the others.
    assert zeros.max() == 64
    assert np.count_nonzero(zeros == 64) > 0.5 * np.count_nonzero(zeros)
    assert set(np.unique(erased)) == {0.0, 1.0}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_trains_the_middle_network_and_scores_it(name, processed):
    row = run_option(Trial(name, epochs=1), processed)
    assert row["change"] == f"middle, 1 epochs, {name}"
    assert row["epochs"] == 1
    assert row["fit_seconds"] > 0
    for split in ("validation_accuracy", "test_accuracy"):
        assert 0.0 <= row[split] <= 1.0


def test_a_seed_other_than_the_run_s_default_is_named_in_the_row(processed):
    default = run_option(Trial("as it is", epochs=1, seed=DEFAULT_SEED), processed)
    other = run_option(Trial("as it is", epochs=1, seed=7), processed)
    assert default["change"] == "middle, 1 epochs, as it is"
    assert other["change"] == "middle, 1 epochs, as it is, seed 7"


def test_each_option_changes_the_optimizer_or_the_images_it_names(processed):
    import keras

    from tasks.training.models.cnn import CNNParams

    params = CNNParams(epochs=1)
    x, y = processed.load(*SPLIT_ARRAYS["train"])
    plain_batch = next(iter(option_batches(OPTIONS["as it is"], x, y, params, 0, 10)))[0]
    for name, option in OPTIONS.items():
        optimizer = option_network(option, params, 0, 10).optimizer
        batch = next(iter(option_batches(option, x, y, params, 0, 10)))[0].numpy()
        assert isinstance(optimizer, keras.optimizers.SGD) == name.startswith("SGD"), name
        assert optimizer.use_ema == name.startswith("weights averaged"), name
        changed = np.any(batch != plain_batch.numpy(), axis=(1, 2, 3))
        if name.startswith("cutout"):
            # The same shifted and mirrored images, about half of them with a square erased.
            assert 0.3 < changed.mean() < 0.7
            assert np.all(batch[changed] <= plain_batch.numpy()[changed])
        else:
            assert not changed.any(), name


def test_an_option_s_parameters_change_the_named_network_and_nothing_else():
    from tasks.training.models.cnn import SMALL_BLOCKS, WIDE_BLOCKS, CNNParams

    plain = Trial("as it is", 10, avx2=True, network="small").params()
    assert plain == CNNParams(conv_blocks=SMALL_BLOCKS, epochs=10, precision="float32")
    larger = Trial("batches of 256, rate 3e-3", 10, network="wide").params()
    assert larger == CNNParams(
        conv_blocks=WIDE_BLOCKS, epochs=10, batch_size=256, learning_rate=3e-3
    )
    warming = Trial("a warm-up epoch to rate 4e-3", 10).params()
    assert (warming.learning_rate, warming.warmup_epochs) == (4e-3, 1)
    before = Trial("dropout 0.4, shifts of up to 2 pixels", 10, network="small").params()
    assert (before.dropout, before.shift_pixels) == (0.4, 2) != (plain.dropout, plain.shift_pixels)
    for name, dropout in (("dropout 0.1", 0.1), ("no dropout", 0.0)):
        lighter = Trial(name, 10, avx2=True, network="small").params()
        assert lighter == plain.model_copy(update={"dropout": dropout}) != plain
    earlier = Trial("blocks (24),(48,48),(96)", 10).params()
    assert earlier.conv_blocks == ((24,), (48, 48), (96,))
    middle = Trial("as it is", 10).params()
    assert earlier == middle.model_copy(update={"conv_blocks": earlier.conv_blocks})
    assert earlier.conv_blocks != middle.conv_blocks


def test_the_in_process_benchmarks_arguments_choose_the_avx2_kernels_and_make_the_output(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+")
    output = tmp_path / "tables"
    args = parsed_in_process(parser, ["--seeds", "1", "2", "--output", str(output)])
    assert (args.seeds, args.avx2, args.output) == ([1, 2], False, output)
    assert output.is_dir()
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ
    assert parsed_in_process(argparse.ArgumentParser(), ["--avx2", "--output", str(output)]).avx2
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
