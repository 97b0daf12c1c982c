"""Budget-aware rank learning during training (issue 4; the method is in docs/rank_learning.md).

The model is decomposed at a mild budget ('rank_learning.initial_ratio'); every rank channel between factors gets a
learnable gate (a weight pre-op on the factor that produces the channel, placed before NNCF's weight quantizer);
the controller's loss and scheduler then shrink the ranks to 'budget.target_ratio' and freeze them; truncation
slices the factor layers (and their per-channel quantizer parameters) to the learned ranks.

| module | role |
|---|---|
| ``gates`` | :class:`RankGate` (gate, mask and ADMM buffers of one gated factor) and :class:`GateGroup` lookup |
| ``allocation`` | the Z-step's greedy budget projection (channels kept per group under a cost budget) |
| ``schedules`` | budget schedules (exponential, multistep) and :class:`RankLearningScheduler` |
| ``loss`` | :class:`RankLearningLoss`: cost-weighted group lasso + ADMM proximity |
| ``truncation`` | fold gates into weights, slice factors and quantizers, keep NNCF's state in step |
| ``setup`` | the builder hook: budget bookkeeping in the plan and the gate insertion commands |
| ``controller`` | :class:`RankLearningController` (registered for NNCF's adaptive accuracy-aware loop) |
"""

from nncf_tdplugin.rank_learning.allocation import allocate
from nncf_tdplugin.rank_learning.gates import GateGroup, RankGate, find_groups
from nncf_tdplugin.rank_learning.schedules import budget_ratio

__all__ = ["GateGroup", "RankGate", "allocate", "budget_ratio", "find_groups"]
