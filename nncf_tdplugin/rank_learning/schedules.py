"""Budget schedules and the rank-learning scheduler.

The budget is a ratio ``dense cost / compressed cost`` in the metric and scope of ``budget``. It starts at
``rank_learning.initial_ratio`` and reaches ``budget.target_ratio`` at the end of the schedule:

- ``exponential``: ``r(t) = r0 * (rT / r0) ** (t / E)`` for ``t`` in epochs (fractional within an epoch once the
  number of steps per epoch is known: ``steps_per_epoch`` if configured, else counted in the first epoch and used
  from the second on; the k-th batch of epoch e, k from 1, trains at ``t = e + (k - 1) / steps_per_epoch`` as in
  NNCF's sparsity schedulers), ``E = num_epochs``. The allowed cost
  ``C / r(t)`` thus decays exponentially, like NNCF's exponential sparsity schedule of the density.
- ``multistep``: ``r = r0`` before ``multistep_epochs[0]``, then ``multistep_ratios[i]`` from epoch
  ``multistep_epochs[i]`` on (NNCF's multistep schedule).
"""

from typing import Any, Optional

from nncf.common.schedulers import BaseCompressionScheduler


def budget_ratio(rl: dict, epoch: float) -> float:
    """The scheduled budget ratio at (fractional) ``epoch`` (0 = the first epoch)."""
    r0, rt = rl["initial_ratio"], rl["target_ratio"]
    if epoch <= 0:
        return r0
    if rl["schedule"] == "multistep":
        ratio = r0
        for e, r in zip(rl["multistep_epochs"], rl["multistep_ratios"]):
            if epoch >= e:
                ratio = max(r, r0)  # (r0 may have been raised above a default step when the model was built)
        return ratio
    end = rl["num_epochs"]
    if epoch >= end:
        return rt
    return r0 * (rt / r0) ** (epoch / end)


class RankLearningScheduler(BaseCompressionScheduler):
    """``step()`` per batch, ``epoch_step()`` per epoch (both at the beginning, as NNCF's schedulers).

    Every ``update_every`` steps and at every epoch start the controller re-projects the gates onto the scheduled
    budget (the Z-step); at ``freeze_epoch`` it freezes the ranks at the target. The state (epoch, step, steps per
    epoch, frozen, a budget set through ``compression_rate``, disabled) round-trips through
    ``get_state``/``load_state``; the per-channel state is in the model's ``state_dict``.

    One dual update per gradient step: when the Z-step of an epoch start and the periodic one of the epoch's first
    step coincide (``current_step % update_every == 0``), the step does not project again (the budget is the same;
    a second dual update with no gradient step between would add ``g - z`` to the dual twice).

    ``disabled`` (set by the controller's ``disable_scheduler()``, which NNCF's accuracy-aware loop calls before it
    sets ``compression_rate``): ``step()`` and ``epoch_step()`` do nothing, as NNCF's ``StubCompressionScheduler``,
    while the state (the rate set from outside, frozen) is still saved with the checkpoints.
    """

    def __init__(self, controller, rl: dict):
        super().__init__()
        self._controller = controller
        self._rl = rl
        self.step_in_epoch = 0
        self.steps_per_epoch: Optional[int] = rl.get("steps_per_epoch")  # else counted in the first epoch
        self.frozen = False
        self.override_ratio: Optional[float] = None  # set through compression_rate (accuracy-aware training)
        self.z_steps = 0
        self.disabled = False  # disable_scheduler(): step() and epoch_step() do nothing
        self._projected_since_step = False  # a Z-step (with its dual update) since the last step()

    @property
    def fractional_epoch(self) -> float:
        e = max(self.current_epoch, 0)
        if self.steps_per_epoch:
            # step_in_epoch counts the step() calls of this epoch, the batch about to be trained included
            e += min(max(self.step_in_epoch - 1, 0), self.steps_per_epoch) / self.steps_per_epoch
        return float(e)

    @property
    def current_ratio(self) -> float:
        """The budget ratio the ranks are projected onto now."""
        if self.override_ratio is not None:
            return self.override_ratio
        if self.frozen:
            return self._rl["target_ratio"]
        return budget_ratio(self._rl, self.fractional_epoch)

    @property
    def target_ratio(self) -> float:
        return self.override_ratio if self.override_ratio is not None else self._rl["target_ratio"]

    def step(self, next_step: Optional[int] = None) -> None:
        if self.disabled:
            return
        super().step(next_step)
        self.step_in_epoch += 1
        projected, self._projected_since_step = self._projected_since_step, False
        if not self.frozen and self.override_ratio is None and self.current_step > 0 \
                and self.current_step % self._rl["update_every"] == 0 and not projected:
            self._controller.z_step(self.current_ratio)
            self.z_steps += 1

    def epoch_step(self, next_epoch: Optional[int] = None) -> None:
        if self.disabled:
            return
        if self.current_epoch == 0 and self.steps_per_epoch is None and self.step_in_epoch > 0:
            self.steps_per_epoch = self.step_in_epoch
        super().epoch_step(next_epoch)
        self.step_in_epoch = 0
        if self.frozen or self.override_ratio is not None:
            return
        if self.current_epoch >= self._rl["freeze_epoch"]:
            self._controller.freeze()
        elif self.current_epoch > 0:
            self._controller.z_step(self.current_ratio)
            self.z_steps += 1
            self._projected_since_step = True

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "step_in_epoch": self.step_in_epoch, "steps_per_epoch": self.steps_per_epoch,
                "frozen": self.frozen, "override_ratio": self.override_ratio, "z_steps": self.z_steps,
                "disabled": self.disabled, "projected_since_step": self._projected_since_step}

    def load_state(self, state: dict[str, Any]) -> None:
        """Tolerant of older states and of the empty state of NNCF's ``StubCompressionScheduler`` (saved by
        versions that swapped the scheduler out in ``disable_scheduler()``): missing keys take their defaults."""
        self._current_step = state.get("current_step", -1)
        self._current_epoch = state.get("current_epoch", -1)
        self.step_in_epoch = state.get("step_in_epoch", 0)
        self.steps_per_epoch = state.get("steps_per_epoch")
        self.frozen = state.get("frozen", False)
        self.override_ratio = state.get("override_ratio")
        self.z_steps = state.get("z_steps", 0)
        self.disabled = state.get("disabled", False)
        self._projected_since_step = state.get("projected_since_step", False)
