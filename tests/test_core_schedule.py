"""The core schedule on machines of 1 to 64 cores, simulated: plain functions of a core
count, driven here as the run drives them with the cores it finds."""

import pytest

import tasks.run.config
from benchmarks.core_schedule import OUTPUT, render, simulated_runs
from tasks.budget.planner import SAFETY
from tasks.budget.schedule import schedule_cores
from tasks.core.contracts import Scaling
from tasks.run.config import DEFAULT_MODELS, PipelineConfig
from tasks.training.models.registry import model_spec
from tasks.training.models.xgboost_model import ROUNDS_NEEDED

SCALINGS = {name: model_spec(name).scaling for name in DEFAULT_MODELS}


def test_amdahls_law_gives_the_speed_up_and_the_threads_worth_using():
    cnn = Scaling(parallel=0.88)
    assert cnn.speedup(1) == pytest.approx(1.0)
    assert cnn.speedup(2) == pytest.approx(1 / (0.12 + 0.44))
    assert cnn.speedup(64) < 1 / 0.12  # never past the serial share's limit
    # speedup(t) / t >= 0.5 up to t = (2 - 0.88) / 0.12 = 9.3 threads
    assert cnn.useful_threads() == 9
    assert cnn.speedup(9) / 9 >= 0.5 > cnn.speedup(10) / 10
    one_thread = Scaling(parallel=0.0, most_threads=1)
    assert one_thread.speedup(16) == pytest.approx(1.0)
    assert one_thread.useful_threads() == 1


def test_two_cores_keep_todays_two_lanes_of_one_thread_and_one_core_has_one_lane():
    for cores, lanes in ((2, 2), (1, 1)):
        schedule = schedule_cores(cores, SCALINGS, "cnn")
        assert schedule.lanes == lanes
        assert set(schedule.threads.values()) == {1}


def test_fewer_cores_than_models_give_a_lane_per_core_and_one_thread_each():
    schedule = schedule_cores(4, SCALINGS, "cnn")
    assert (schedule.lanes, set(schedule.threads.values())) == (4, {1})


@pytest.mark.parametrize("cores", [5, 8, 16, 64])
def test_every_model_starts_at_once_one_thread_where_it_uses_one_the_rest_to_the_cnn(cores):
    schedule = schedule_cores(cores, SCALINGS, "cnn")
    threads = schedule.threads
    assert schedule.lanes == len(DEFAULT_MODELS)
    assert sum(threads.values()) == cores  # every core given, none twice
    assert threads["svm_rbf"] == 1  # libsvm fits on one thread
    for name in ("xgboost", "random_forest", "logistic_regression"):
        assert 1 <= threads[name] <= SCALINGS[name].useful_threads()
    assert threads["cnn"] == max(threads.values())


def test_without_the_cnn_spare_cores_go_to_the_models_that_can_use_them():
    scalings = {name: SCALINGS[name] for name in ("xgboost", "svm_rbf", "random_forest")}
    schedule = schedule_cores(16, scalings, "cnn")
    assert sum(schedule.threads.values()) <= 16
    assert schedule.threads["svm_rbf"] == 1
    assert schedule.threads["random_forest"] > 16 // 3  # more than an even share


def test_the_users_parallel_models_or_threads_override_the_plan():
    schedule = schedule_cores(16, SCALINGS, "cnn", parallel_models=4)
    assert (schedule.lanes, set(schedule.threads.values())) == (4, {4})
    schedule = schedule_cores(16, SCALINGS, "cnn", threads_per_model=2)
    assert (schedule.lanes, set(schedule.threads.values())) == (5, {2})


def test_on_every_simulated_machine_the_plan_ends_by_its_deadline():
    runs = simulated_runs(15.0)
    assert [run.schedule.cores for run in runs] == [1, 2, 4, 8, 16, 32, 64]
    # On 2 cores, as the default run planned on the AVX2 EPYC it was measured on: the
    # middle network past its fewest 15 epochs, XGBoost the 140 rounds it needs.
    two = {model.model: model for model in runs[1].plan.models}
    assert two["cnn"].variant.startswith("middle")
    assert two["cnn"].steps >= 15
    assert two["xgboost"].steps == ROUNDS_NEEDED == 140
    epochs = []
    for run in runs:
        assert run.training_seconds <= run.plan.window_seconds / SAFETY + 1e-6
        assert run.work_share <= run.held_share <= 1.0 + 1e-9
        if run.schedule.cores <= 2:  # measured machines: every core busy to the end
            assert run.held_share >= 0.99
        cnn = next(model for model in run.plan.models if model.model == "cnn")
        epochs.append((cnn.variant, cnn.steps))
    # More cores never buy the CNN less: a wider network once it fits, more epochs after.
    width = {"small": 0, "middle": 1, "wide": 2}
    assert epochs == sorted(epochs, key=lambda e: (width[e[0].split()[0]], e[1]))
    # On 4 cores, XGBoost takes the cores of the models done (the cores were held 52 % of
    # the time when it kept its one thread).
    assert runs[2].held_share > 0.85


def test_the_published_table_is_the_one_the_code_produces():
    assert OUTPUT.read_text() == render(15.0)


def test_with_a_gpu_the_cnn_keeps_one_thread_and_the_cores_go_to_the_others(monkeypatch):
    monkeypatch.setattr(tasks.run.config, "usable_cores", lambda: 16)
    schedule = PipelineConfig().core_schedule(gpu=True)
    threads = schedule.threads
    assert threads["cnn"] == 1
    assert threads["svm_rbf"] == threads["logistic_regression"] == 1
    assert threads["random_forest"] > 16 // 4  # the cores a CPU CNN would have held
    assert sum(threads.values()) <= 16
    assert PipelineConfig().core_schedule(gpu=False).threads["cnn"] > 1
