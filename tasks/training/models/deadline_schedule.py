"""The CNN's learning rate under a deadline: a cosine decay over the epochs planned, re-planned
after each epoch from the latest ones' time. Plain hooks that Keras calls through a
LambdaCallback, with a clock a test can move."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tasks.training.models.base import TrainingContext

# How many of the latest epochs the deadline's re-planning takes an epoch's time from.
RECENT = 3
# How much slower than the slowest of the latest epochs the next ones must still fit at for
# the plan to add epochs. Epochs waver by 2 to 3 % (a 30-minute --avx2 run's on the AVX-512
# BF16 EPYC); at the slowest alone, the plan went 28, 31, 32, 31, 32 there.
RAISE_MARGIN = 0.05


@dataclass
class CosineToDeadline:
    """The learning rate, set before each batch: a cosine decay to zero over the planned epochs,
    as Keras' CosineDecay. With a deadline, the epochs are re-planned after each one from the
    typical epoch's time (the median of the latest): fewer as soon as they would run past the
    deadline, more (up to `context.most_steps`) only as many as fit at `raise_margin` over the
    slowest of the latest epochs, with every core once the others are done and an epoch with
    them is timed, not when expected. Epoch times that waver, others done late or a speed-up
    smaller than measured then move the plan once, not back and forth: to add an epoch even
    slower ones must fit, to drop one the typical must not. The rest of the decay is stretched
    or compressed to end with the new last epoch, where training stops, fully decayed, rather
    than cut off at the deadline. Once one whole epoch or none is left, the time the whole
    ones leave before the deadline goes to a last, partial epoch (`tail_steps` batches, at the
    margin over the slowest epochs and validations), the decay stretched to end with it: on
    the AVX2 EPYC a 27-s epoch that did not fit the 19 s left had ended a 5-minute run 8 % early.
    With `warmup_epochs`, the rate first rises linearly to its peak over those epochs, and the
    decay starts after them. `clock` gives the time, as `time.time()` (the deadline's)."""

    network: Any
    learning_rate: float
    steps_per_epoch: int
    epochs: int
    context: TrainingContext
    warmup_epochs: int = 0
    clock: Callable[[], float] = time.time
    raise_margin: float = RAISE_MARGIN
    step: int = 0
    # The decay runs from `progress_from` at `step_from` to 1 at `end_step`.
    progress_from: float = 0.0
    step_from: int = 0
    end_step: int = 0
    epoch_started: float = 0.0
    began_alone: bool = False
    # Each epoch's seconds after the first (which also traced the graph), by whether it
    # shared the cores with other models or had them all from its start.
    shared_seconds: list[float] = field(default_factory=list)
    alone_seconds: list[float] = field(default_factory=list)
    first_epoch_seconds: float = 0.0
    # Each epoch's validation: from its last batch's end to its end.
    validation_seconds: list[float] = field(default_factory=list)
    batch_ended: float = 0.0
    tail_steps: int = 0
    # The fit's first epoch here (counted from 0): a resumed fit's is the epoch after those
    # an earlier run trained; it traces the graph, so it is timed apart.
    first_epoch: int = 0

    # What a resumed fit takes up (`resumable`): where the learning rate is. Epoch times are
    # measured afresh: the rerun may find another machine, or the same one busier.
    RESUMED: ClassVar[tuple[str, ...]] = (
        "step", "progress_from", "step_from", "end_step", "tail_steps",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.end_step = self.epochs * self.steps_per_epoch
        self.step_from = self.warmup_steps

    def hooks(self) -> dict[str, Callable[..., None]]:
        """Its hooks, by the names Keras' LambdaCallback takes them."""
        names = ("on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_epoch_end")
        return {name: getattr(self, name) for name in names}

    def resumable(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.RESUMED}

    def resume(self, state: dict[str, float], epochs_done: int) -> None:
        """Take up where a fit that trained `epochs_done` epochs left the rate (`resumable`)."""
        for name in self.RESUMED:
            setattr(self, name, state[name])
        self.first_epoch = epochs_done

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    @property
    def last_epoch(self) -> int:
        return -(-self.end_step // self.steps_per_epoch)

    @property
    def whole_epochs(self) -> int:
        """The epochs planned, not counting a partial last one."""
        return self.end_step // self.steps_per_epoch

    def progress(self) -> float:
        span = max(1, self.end_step - self.step_from)
        done = max(0, self.step - self.step_from) / span
        return min(1.0, self.progress_from + (1 - self.progress_from) * done)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = self.clock()
        self.began_alone = self.context.handover.released

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.step < self.warmup_steps:
            rate = self.learning_rate * (self.step + 1) / self.warmup_steps
        else:
            rate = 0.5 * self.learning_rate * (1 + math.cos(math.pi * self.progress()))
        self.network.optimizer.learning_rate = rate
        self.step += 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batch_ended = self.clock()
        # Under a deadline the decay may end part-way through an epoch: training ends there.
        if self.context.deadline is not None and self.step >= self.end_step:
            self.network.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.context.deadline is None:
            return
        done, now = epoch + 1, self.clock()
        if self.step < done * self.steps_per_epoch:  # a partial epoch: the last
            self.network.stop_training = True
            return
        seconds = now - self.epoch_started
        self.validation_seconds.append(now - self.batch_ended)
        if epoch == self.first_epoch:
            self.first_epoch_seconds = seconds
        else:
            (self.alone_seconds if self.began_alone else self.shared_seconds).append(seconds)
        replanned = self.replan(done, now)
        if self.whole_epochs - done <= 1:  # the partial epoch planned: as much as still fits
            self.plan_tail(done, now, shrink=bool(self.tail_steps) and not replanned)
        if done >= self.last_epoch:
            self.network.stop_training = True

    def replan(self, done: int, now: float) -> bool:
        """The whole epochs left, re-planned from the latest epochs' time; whether they
        changed (a partial epoch planned after them is dropped then)."""
        whole, most = self.whole_epochs, max(0, self.most_epochs - done)
        typical, fitting = self.epochs_left(now, most)
        if fitting > whole - done:  # more: as many as fit at the margin over the slowest
            fitting = max(whole - done, self.epochs_left(now, most, raising=True)[1])
        last = done + fitting
        if last == whole:
            return False
        self.context.logger.info(
            "cnn: an epoch takes %.0f s here: training %d epochs instead of %d, the "
            "learning rate's decay %s to end with the last", typical, last, whole,
            "stretched" if last > whole else "compressed",
        )  # fmt: skip
        self.tail_steps = 0
        self.decay_to(last * self.steps_per_epoch)
        return True

    def plan_tail(self, done: int, now: float, shrink: bool = False) -> None:
        """A last, partial epoch after the whole ones planned (one or none): the batches
        that fit before the deadline at the margin over the slowest of the latest epochs,
        after a validation as slow as the slowest of the latest; never past the most
        epochs. `shrink`: at most those already planned."""
        whole_left = self.whole_epochs - done
        epoch, _ = self.epochs_left(now, 0, raising=True)
        validation = max(self.validation_seconds[-RECENT:]) * (1 + self.raise_margin)
        step_seconds = max(epoch - validation, 1e-9) / self.steps_per_epoch
        seconds = self.context.deadline - now - whole_left * epoch - validation
        fitting = min(self.steps_per_epoch - 1, int(max(0.0, seconds) / step_seconds))
        if done + whole_left >= self.most_epochs:
            fitting = 0
        if shrink:
            fitting = min(fitting, self.tail_steps)
        if fitting == self.tail_steps:
            return
        self.context.logger.info(
            "cnn: the deadline leaves time for %d of an epoch's %d batches after epoch %d%s: "
            "the learning rate's decay %s to end with them", fitting, self.steps_per_epoch,
            done + whole_left, f", not {self.tail_steps}" if shrink else "",
            "compressed" if shrink else "stretched",
        )  # fmt: skip
        self.tail_steps = fitting
        self.decay_to((done + whole_left) * self.steps_per_epoch + fitting)

    def decay_to(self, end_step: int) -> None:
        """The rest of the decay, from where it is now, stretched or compressed to end at
        `end_step`; still warming up, from the warm-up's end."""
        self.progress_from, self.step_from = self.progress(), max(self.step, self.warmup_steps)
        self.end_step = end_step

    @property
    def most_epochs(self) -> int:
        return max(self.context.most_steps or self.epochs, self.epochs)

    def epochs_left(self, now: float, most: int, raising: bool = False) -> tuple[float, int]:
        """An epoch's seconds, the median of the latest epochs' or, `raising` the plan,
        `raise_margin` over the slowest of them (the first, which also traced the graph,
        included), and how many more epochs, at most `most`, fit before the deadline at
        that speed: beside the other models until the plan expects them done (`raising`:
        all along until they are), then with every core as timed or, until one such epoch
        is (`raising`: at the speed beside them), as the plan's speed-up counts on."""
        handover = self.context.handover
        timed = [self.first_epoch_seconds, *self.shared_seconds] if raising else self.shared_seconds

        def pick(seconds: list[float]) -> float:
            return max(seconds) * (1 + self.raise_margin) if raising else statistics.median(seconds)

        shared = pick(timed[-RECENT:] or [self.first_epoch_seconds])
        untimed = shared if raising else None  # none timed with every core: raise as beside them
        alone = pick(self.alone_seconds[-RECENT:]) if self.alone_seconds else untimed
        epoch = handover.step_cost(shared, alone)
        seconds = self.context.deadline - now
        fitting = handover.steps_left(epoch, seconds, now, most, expecting=not raising)
        return (epoch.per_step_alone if handover.released else shared), fitting
