"""The composite compression loss of rank learning (docs/rank_learning.md):

    L_c = lambda * sum_groups sum_c w_c |g_c|  +  rho / 2 * sum_groups sum_c (g_c - z_c + u_c)^2

``w_c`` is the marginal cost of channel c in the budget metric (the cost saved by removing one channel of its
group at the current ranks) divided by the mean over all groups; ``z`` is the latest projection of ``g + u`` onto
the budget and ``u`` the scaled dual variable (both buffers of the gates, updated at Z-steps). Channels masked by
progressive masking have no term (their dual is reset). Zero once frozen.
"""

import torch
from nncf.torch.compression_method_api import PTCompressionLoss


class RankLearningLoss(PTCompressionLoss):
    def __init__(self, controller, regularization: float, rho: float, device: torch.device):
        super().__init__()
        self._controller = controller
        self.regularization = float(regularization)
        self.rho = float(rho)
        self._device = device

    def calculate(self) -> torch.Tensor:
        groups = self._controller.groups
        if self._controller.frozen or not groups:
            return torch.zeros([], device=self._device)
        total = torch.zeros([], device=groups[0].gate.gate.device)
        for group in groups:
            gate = group.gate
            g = gate.gate
            m = gate.mask  # masked channels (progressive masking) are out of the model: no term for them
            if self.regularization:
                total = total + self.regularization * (gate.cost_weight * g.abs() * m).sum()
            if self.rho:
                total = total + 0.5 * self.rho * ((g - gate.z + gate.u).pow(2) * m).sum()
        return total
