"""What the planner is given and what it gives back: each model's ways to train with
their measured cost (`Variant`), and the plan (`ModelPlan` for each model, `Plan`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from tasks.core.contracts import Cost
from tasks.training.cores import CoreHandover


@dataclass(frozen=True)
class Variant:
    """One way to train a model, with its measured cost.

    Attributes:
        model: the model's name.
        label: what the variant is, for the plan's table ("wide network").
        params: the hyper-parameter values it sets.
        cost: what it costs here.
        step_field: the parameter counting its steps (`epochs`, `n_estimators`), or None.
        min_steps: the fewest steps worth training; below them the variant is left out.
        max_steps: the most steps the plan may give it: the variant's own most, or the
            configured steps where the user or a profile chose them (`most_steps`).
        steps_pinned: the user set the steps; the plan keeps them even when they do not fit.
        shared_max_steps: the most where it shares a lane with the others; None: max_steps.
    """

    model: str
    label: str
    params: dict
    cost: Cost
    step_field: str | None = None
    min_steps: int = 0
    max_steps: int = 0
    steps_pinned: bool = False
    shared_max_steps: int | None = None

    @property
    def iterative(self) -> bool:
        return self.step_field is not None

    def sharing(self) -> Variant:
        """The variant as planned on a lane shared with the others."""
        if self.shared_max_steps is None:
            return self
        return replace(self, max_steps=min(self.max_steps, self.shared_max_steps))


@dataclass(frozen=True)
class ModelPlan:
    model: str
    variant: str
    params: dict
    steps: int | None
    estimated_seconds: float
    lane: int
    notes: tuple[str, ...] = ()
    max_steps: int | None = None  # the variant's most steps: the most a fit may extend to
    # For the model that gets every core once the others are done: when, in seconds after
    # planning, and how much faster its steps then are.
    handover: CoreHandover | None = None
    # What comes after its last step (its predictions), at the speed it will have then:
    # trained up to the deadline, it stops that much before it.
    closing_seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What the run will train, and the arithmetic behind it (all in seconds)."""

    budget_seconds: float
    elapsed_seconds: float
    reserve_seconds: float
    window_seconds: float
    lanes: int
    models: tuple[ModelPlan, ...]
    dropped: dict[str, str] = field(default_factory=dict)
    # How long the models beside `own_lane` may hold theirs, where less than the window
    # (`planner.MOST_STEPS_GIVEN_UP`).
    room_beside: float | None = None
    # The model planned on a lane of its own, with every core once the others are done.
    own_lane: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Plan:
        def model_plan(model: dict) -> ModelPlan:
            handover = CoreHandover.from_dict(model.get("handover"))
            return ModelPlan(**(model | {"notes": tuple(model["notes"]), "handover": handover}))

        return cls(**(values | {"models": tuple(map(model_plan, values["models"]))}))
