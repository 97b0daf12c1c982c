"""Small models for tests, with weights built to be low-rank (random weights are full rank, which says nothing
about how a trained network decomposes)."""

import torch
from torch import nn


def low_rank_conv_weight(t, s, k, r_out, r_in, noise=0.0):
    core = torch.randn(r_out, r_in, k, k)
    w = torch.einsum("ab,bcij,cd->adij", torch.randn(t, r_out), core, torch.randn(r_in, s))
    w = w / w.std() * (2.0 / (s * k * k)) ** 0.5
    return w + noise * w.std() * torch.randn_like(w)


def low_rank_matrix(t, s, r, noise=0.0):
    w = torch.randn(t, r) @ torch.randn(r, s)
    w = w / w.std() * (2.0 / s) ** 0.5
    return w + noise * w.std() * torch.randn_like(w)


class LowRankCNN(nn.Module):
    """conv(3->16) bn relu | conv3x3 s2 (16->64) | conv3x3 (64->64) | 1x1 (64->128) | depthwise 3x3 | fc1 | fc."""

    def __init__(self, noise: float = 0.01):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 64, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 128, 1)
        self.dw = nn.Conv2d(128, 128, 3, padding=1, groups=128)
        self.fc1 = nn.Linear(128, 64)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.conv2.weight.copy_(low_rank_conv_weight(64, 16, 3, 12, 6, noise))
            self.conv3.weight.copy_(low_rank_conv_weight(64, 64, 3, 12, 12, noise))
            self.conv4.weight.copy_(low_rank_matrix(128, 64, 12, noise)[:, :, None, None])
            self.fc1.weight.copy_(low_rank_matrix(64, 128, 8, noise))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.bn3(self.conv3(x)))
        x = torch.relu(self.dw(self.conv4(x)))
        x = x.mean((2, 3))
        return self.fc(torch.relu(self.fc1(x)))


INPUT_SIZE = [1, 3, 32, 32]


class ConvStack(nn.Module):
    """Convolution time dominates: a stem, three low-rank 3x3 convs at 32x32, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(64, 64, 3, padding=1) for _ in range(3))
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(low_rank_conv_weight(64, 64, 3, 16, 16, 0.01))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))
