"""The time-budget planner as plain functions: measured costs and a budget in, a plan out."""

import json
import math
from dataclasses import replace

import pytest

from tasks.budget.measure import slowest_costs
from tasks.budget.plan_types import Plan, Variant
from tasks.budget.planner import SAFETY, BudgetTooSmallError, lane_seconds, lanes_of, plan_run
from tasks.budget.plans import describe_plan
from tasks.core.contracts import Cost
from tasks.training.models.registry import drop_order, own_lane_model


def cnn(wide_epoch: float, small_epoch: float, max_epochs: int = 24) -> list[Variant]:
    return [
        Variant("cnn", "wide", {}, Cost(20, wide_epoch), "epochs", 10, max_epochs),
        Variant(
            "cnn", "small", {"conv_blocks": "small"}, Cost(15, small_epoch), "epochs", 3, max_epochs
        ),
    ]


def others(round_seconds: float = 4.0, svm: float = 70.0) -> dict[str, list[Variant]]:
    return {
        "xgboost": [
            Variant("xgboost", "hist", {}, Cost(10, round_seconds), "n_estimators", 20, 500)
        ],
        "svm_rbf": [
            Variant("svm_rbf", "128 components", {}, Cost(svm)),
            Variant("svm_rbf", "64 components", {"pca_components": 64}, Cost(svm / 2)),
        ],
        "random_forest": [Variant("random_forest", "forest", {}, Cost(60))],
        "logistic_regression": [Variant("logistic_regression", "lr", {}, Cost(15))],
    }


def plan(variants, budget_minutes, elapsed=30.0, reserve=25.0, lanes=2) -> Plan:
    dedicated = own_lane_model()
    return plan_run(variants, budget_minutes * 60, elapsed, reserve, lanes, drop_order(), dedicated)


def by_model(result: Plan) -> dict:
    return {model.model: model for model in result.models}


def test_lanes_of_places_longest_first_on_the_freest_lane():
    placed, loads = lanes_of([10, 50, 30, 20], lanes=2)
    assert placed == [0, 0, 1, 1]  # a tie goes to the first lane
    assert loads == [60, 50]


def test_an_avx2_machine_gets_the_small_cnn_and_trimmed_boosting_rounds():
    # AVX2 figures: the wide network's epoch 139 s, the small one's 45 s.
    result = plan({"cnn": cnn(139, 45)} | others(), budget_minutes=15)
    window = (900 - 30 - 25) * SAFETY
    assert result.window_seconds == pytest.approx(window)
    models = by_model(result)
    assert models["cnn"].variant == "small"
    assert models["cnn"].steps == math.floor((window - 15) / 45) == 16
    assert models["cnn"].params == {"conv_blocks": "small", "epochs": 16}
    assert models["cnn"].lane == 0
    # The others share lane 1: 70 + 60 + 15 + 10 s, the rest in 4 s rounds.
    rounds = models["xgboost"].steps
    assert rounds == math.floor((window - 155) / 4)
    assert {m.lane for m in result.models if m.model != "cnn"} == {1}
    assert max(lane_seconds(result.models, result.lanes)) <= window
    assert result.dropped == {}


def test_a_fast_machine_gets_the_wide_cnn_where_it_has_ten_epochs():
    result = plan({"cnn": cnn(44, 12)} | others(1.0), budget_minutes=15)
    models = by_model(result)
    assert models["cnn"].variant == "wide"
    assert models["cnn"].steps == math.floor(((900 - 55) * SAFETY - 20) / 44) == 16
    # XGBoost has time for every configured round: nothing trimmed, no note.
    assert models["xgboost"].steps == 500
    assert models["xgboost"].notes == ()


def test_a_small_budget_trims_rounds_and_takes_the_svm_on_fewer_components():
    result = plan({"cnn": cnn(139, 45)} | others(), budget_minutes=5)
    models = by_model(result)
    window = (300 - 30 - 25) * SAFETY
    assert models["cnn"].steps == math.floor((window - 15) / 45) == 4
    # 128 components leave XGBoost 16 rounds, fewer than its 20: 64 components leave 25.
    assert models["svm_rbf"].variant == "64 components"
    assert models["xgboost"].steps == math.floor((window - 35 - 60 - 15 - 10) / 4) == 25
    assert result.dropped == {}


def test_a_smaller_budget_then_leaves_out_the_forest_first():
    result = plan({"cnn": cnn(139, 45)} | others(), budget_minutes=4)
    window = (240 - 30 - 25) * SAFETY
    assert set(result.dropped) == {"random_forest"}
    assert by_model(result)["xgboost"].steps == math.floor((window - 35 - 15 - 10) / 4)
    assert max(lane_seconds(result.models, result.lanes)) <= window


def test_a_cnn_without_three_epochs_is_left_out_and_says_why():
    result = plan({"cnn": cnn(400, 200)} | others(), budget_minutes=6)
    assert "cnn" not in by_model(result)
    assert "more than the" in result.dropped["cnn"]


def test_a_budget_below_the_cheapest_plan_is_refused_naming_the_minimum():
    with pytest.raises(BudgetTooSmallError, match=r"logistic_regression alone needs about 2 min"):
        plan({"cnn": cnn(139, 45)} | others(), budget_minutes=1, elapsed=50)


def test_steps_the_user_set_are_kept_and_the_plan_says_they_do_not_fit():
    pinned = Variant("xgboost", "hist", {}, Cost(10, 4), "n_estimators", 20, 500, steps_pinned=True)
    result = plan({"xgboost": [pinned], "logistic_regression": others()["logistic_regression"]}, 10)
    xgboost = by_model(result)["xgboost"]
    assert xgboost.steps == 500
    assert "set explicitly" in xgboost.notes[0]


def test_one_lane_runs_everything_in_turn():
    result = plan({"cnn": cnn(139, 45)} | others(), budget_minutes=15, lanes=1)
    assert {model.lane for model in result.models} == {0}
    assert result.own_lane is None
    assert sum(lane_seconds(result.models, result.lanes)) <= result.window_seconds


def test_models_listed_shortest_first_train_longest_first_as_the_plan_placed_them():
    """The training pool starts the plan's models in its order, each on the lane that frees
    up first: on 3 lanes (the CNN's and 2 shared), the others come longest first, so that
    the pool puts each on the lane the plan gave it."""
    listed = dict(reversed(others().items()))  # logistic regression first, XGBoost last
    result = plan({"cnn": cnn(139, 45)} | listed, budget_minutes=15, lanes=3)
    shared = result.models[1:]
    assert shared[0].model == "xgboost"
    seconds = [model.estimated_seconds for model in shared]
    assert seconds == sorted(seconds, reverse=True)
    free_at, pool_lanes = [0.0, 0.0], []
    for model in shared:  # the pool's queue
        lane = free_at.index(min(free_at))
        pool_lanes.append(1 + lane)
        free_at[lane] += model.estimated_seconds
    assert pool_lanes == [model.lane for model in shared]


def test_a_plan_reads_back_as_it_was_written_and_describes_itself():
    result = plan({"cnn": cnn(139, 45)} | others(), budget_minutes=4)
    assert Plan.from_dict(result.as_dict()) == result
    lines = describe_plan(result)
    assert lines[0].startswith("time budget 4.0 min: 30 s spent before planning")
    assert "plan: cnn: small, 3 epochs" in lines[1]
    assert lines[-1].startswith("plan: random_forest left out:")


def test_a_variant_measured_no_cheaper_is_not_switched_to():
    svm = others()["svm_rbf"]
    svm[1] = Variant("svm_rbf", "64 components", {"pca_components": 64}, Cost(90))  # noisy
    variants = {"svm_rbf": svm, "logistic_regression": others()["logistic_regression"]}
    result = plan(variants, budget_minutes=2, elapsed=20, reserve=17, lanes=1)  # 75 s
    assert by_model(result)["svm_rbf"].variant == "128 components"
    assert set(result.dropped) == {"logistic_regression"}


def test_a_model_that_cannot_fit_even_alone_is_left_out_first():
    # A 45 s window: XGBoost's 20 rounds (90 s) and the forest (60 s) cannot fit at all,
    # so they go before the drop order reaches logistic regression; the SVM on 64
    # components (35 s) and logistic regression (15 s) do not fit together.
    result = plan(others(), budget_minutes=1.5, elapsed=20, reserve=20, lanes=1)
    assert result.dropped["xgboost"] == "needs about 90 s, more than the 45 s window"
    assert result.dropped["random_forest"] == "needs about 60 s, more than the 45 s window"
    assert [(m.model, m.variant) for m in result.models] == [("svm_rbf", "64 components")]
    assert "logistic_regression" in result.dropped


def test_the_cnn_counts_on_every_core_once_the_others_are_done():
    """XGBoost at its 500 rounds leaves the other lane done after 655 s; from then on the
    CNN steps with both cores, at 70 s an epoch instead of 139."""
    variants = cnn(139, 45)
    variants[0] = Variant("cnn", "wide", {}, Cost(20, 139, 70), "epochs", 10, 24)
    result = plan({"cnn": variants} | others(1.0), budget_minutes=30)
    window = (1800 - 55) * SAFETY
    models = by_model(result)
    others_done = 510 + 70 + 60 + 15
    assert max(lane_seconds(result.models, result.lanes)[1:]) == pytest.approx(others_done)
    shared_epochs = (others_done - 20) / 139
    expected = math.floor(shared_epochs + (window - others_done) / 70)
    assert models["cnn"].steps == expected == 17  # 11 without the second core
    assert models["cnn"].handover.after == pytest.approx(others_done)
    assert models["cnn"].handover.speedup == pytest.approx(139 / 70)
    assert models["cnn"].estimated_seconds == pytest.approx(
        others_done + (expected - shared_epochs) * 70
    )
    assert models["cnn"].estimated_seconds <= window
    assert "every core after about 655 s" in models["cnn"].notes[-1]
    assert Plan.from_dict(json.loads(json.dumps(result.as_dict()))) == result  # as kept


def test_the_cnn_s_predictions_are_kept_out_of_its_training_at_the_speed_it_then_has():
    """Of its 20 fixed seconds, 12 are predictions after its last epoch: on a lane of its
    own with every core at the end, twice as fast (139 s an epoch against 69.5)."""
    variants = cnn(139, 45)
    variants[0] = Variant("cnn", "wide", {}, Cost(20, 139, 69.5, closing=12), "epochs", 10, 24)
    variants[1] = replace(variants[1], cost=Cost(15, 45, closing=12))
    models = by_model(plan({"cnn": variants} | others(1.0), budget_minutes=30))
    assert models["cnn"].closing_seconds == pytest.approx(6.0)
    assert "training ends 6 s before the deadline, for its predictions" in models["cnn"].notes
    shared = by_model(plan({"cnn": variants} | others(1.0), budget_minutes=30, lanes=1))
    assert (shared["cnn"].variant, shared["cnn"].handover) == ("small", None)
    assert shared["cnn"].closing_seconds == pytest.approx(12.0)  # one core all along
    assert models["xgboost"].closing_seconds == 0.0  # measured none
    assert not any("before the deadline" in note for note in models["xgboost"].notes)


def test_steps_sharing_the_cores_then_alone():
    cost = Cost(10, 40, 20)
    assert cost.steps_within(410, 30, shared_seconds=1000) == 10  # never alone
    assert cost.steps_within(410, 30, shared_seconds=210) == 5 + 10
    assert cost.steps_within(410, 30, shared_seconds=0) == 20  # alone from the start
    assert cost.steps_within(410, 12, shared_seconds=210) == 12  # at most the configured
    assert cost.seconds(15, shared_seconds=210) == pytest.approx(410)
    assert cost.seconds(4, shared_seconds=210) == pytest.approx(170)
    assert Cost(10, 40).steps_within(410, 30, shared_seconds=210) == 10  # alone unmeasured


def test_nothing_gives_way_to_a_cnn_that_would_not_fit_even_alone():
    small = Variant("cnn", "small", {}, Cost(20, 200, 150), "epochs", 3, 18)
    variants = {"cnn": [small], "svm_rbf": [Variant("svm_rbf", "64 components", {}, Cost(80))]}
    result = plan(variants, budget_minutes=3, elapsed=36.0, reserve=27.0)
    assert [model.model for model in result.models] == ["svm_rbf"]
    assert set(result.dropped) == {"cnn"}


def test_a_cluster_of_two_kinds_of_machine_is_planned_on_each_models_slowest():
    fast = {"cnn": cnn(wide_epoch=40, small_epoch=12)} | others(round_seconds=1.0, svm=30)
    # The AVX2 machine: the wide network cannot fit there, so it was not measured; the
    # forest failed there; the SVM is cheaper there (a faster libsvm build, say).
    slow = {"cnn": cnn(wide_epoch=280, small_epoch=45)[1:]} | others(round_seconds=4.0, svm=20)
    del slow["random_forest"]
    measured, slowest = slowest_costs({"AVX-512 CPU": fast, "AVX2 CPU": slow})

    assert list(measured) == ["cnn", "xgboost", "svm_rbf", "logistic_regression"]
    assert [variant.label for variant in measured["cnn"]] == ["small"]
    assert measured["cnn"][0].cost == Cost(15, 45)
    assert measured["xgboost"][0].cost == Cost(10, 4.0)
    assert [variant.cost for variant in measured["svm_rbf"]] == [Cost(30), Cost(15)]
    assert slowest == {
        "cnn": "AVX2 CPU", "xgboost": "AVX2 CPU", "svm_rbf": "AVX-512 CPU",
        "logistic_regression": "AVX-512 CPU",  # a tie: the first kind
    }  # fmt: skip
    # One kind of machine: its costs as they are, and no kind named.
    assert slowest_costs({"AVX2 CPU": slow}) == (slow, {})


def test_a_higher_most_on_a_lane_of_its_own_leaves_a_shared_lane_as_it_was():
    """The wide network may get 60 epochs on its own lane; on one core, where each model
    gets the same fraction of its most, 60 would have halved XGBoost's rounds there."""
    roomy = [replace(v, max_steps=60, shared_max_steps=30) for v in cnn(40, 15, max_epochs=30)]
    one_core = by_model(plan({"cnn": roomy} | others(), budget_minutes=60, lanes=1))
    as_before = by_model(plan({"cnn": cnn(40, 15, 30)} | others(), budget_minutes=60, lanes=1))
    assert {m: p.steps for m, p in one_core.items()} == {m: p.steps for m, p in as_before.items()}
    assert one_core["xgboost"].steps > 100
    two_cores = by_model(plan({"cnn": roomy} | others(), budget_minutes=60, lanes=2))
    assert two_cores["cnn"].steps > 30


def test_a_user_set_model_past_the_window_fills_one_lane_and_leaves_the_others_theirs():
    """2,000 rounds set by the user (8,010 s) stop at the deadline: on five lanes they hold
    one of the four shared ones, and the other models keep theirs; on two lanes they take
    the only shared one, so the models beside them are left out."""
    pinned = Variant("xgboost", "hist", {}, Cost(10, 4), "n_estimators", 20, 2000, True)
    variants = {"cnn": cnn(44, 12)} | others() | {"xgboost": [pinned]}
    result = plan(variants, budget_minutes=15, lanes=5)
    assert result.dropped == {}
    assert sorted(model.lane for model in result.models) == [0, 1, 2, 3, 4]
    assert by_model(result)["xgboost"].steps == 2000
    two_lanes = plan(variants, budget_minutes=15, lanes=2)
    assert [model.model for model in two_lanes.models] == ["cnn", "xgboost"]
    assert set(two_lanes.dropped) == {"svm_rbf", "random_forest", "logistic_regression"}


def test_models_left_out_for_a_cnn_that_still_does_not_fit_are_kept():
    """Beside 20 rounds the user set (90 s) the CNN gets 2 epochs of its 3 even with
    logistic regression left out, so leaving it out gains nothing: it is kept, and only
    the CNN is left out."""
    small = Variant("cnn", "small", {}, Cost(20.1, 41.5, 23.1), "epochs", 3, 18)
    variants = {"cnn": [small]} | {
        "xgboost": [Variant("xgboost", "hist", {}, Cost(10, 4), "n_estimators", 20, 20, True)],
        "logistic_regression": [Variant("logistic_regression", "lr", {}, Cost(10))],
    }
    result = plan(variants, budget_minutes=3, elapsed=36.0, reserve=27.0)
    assert [model.model for model in result.models] == ["xgboost", "logistic_regression"]
    assert set(result.dropped) == {"cnn"}


def test_epochs_the_user_set_go_to_the_network_that_can_train_them():
    """18 epochs set by the user: where the wide network would get 5 of its fewest 10, the
    small one trains them; where it gets 16, the wide one does."""
    pinned = [replace(variant, steps_pinned=True, max_steps=18) for variant in cnn(139, 45)]
    slow = by_model(plan({"cnn": pinned} | others(), budget_minutes=15))["cnn"]
    assert (slow.variant, slow.steps) == ("small", 18)
    assert "set explicitly" in slow.notes[-1]  # 825 s, past the 760 s window
    fast = [replace(variant, steps_pinned=True, max_steps=18) for variant in cnn(44, 12)]
    assert (by_model(plan({"cnn": fast} | others(), 15))["cnn"].variant) == "wide"


def test_user_set_epochs_that_fit_with_every_core_are_not_said_to_pass_the_window():
    """20 epochs of 30 s beside logistic regression (15 s), then of 15 s with both cores:
    320 s in a 490 s window, though 620 s on one core."""
    small = Variant("cnn", "small", {}, Cost(20, 30, 15), "epochs", 3, 20, steps_pinned=True)
    variants = {"cnn": [small], "logistic_regression": others()["logistic_regression"]}
    cnn_plan = by_model(plan(variants, budget_minutes=10))["cnn"]
    assert (cnn_plan.steps, cnn_plan.estimated_seconds) == (20, pytest.approx(320))
    assert not any("set explicitly" in note for note in cnn_plan.notes)
