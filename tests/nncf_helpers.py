"""Config and training helpers shared by the NNCF integration tests."""

import copy

import nncf
import torch
from nncf.torch import create_compressed_model, register_default_init_args

from tests.models import INPUT_SIZE, LowRankCNN

QUANTIZATION = {
    "algorithm": "quantization",
    "initializer": {"range": {"num_init_samples": 8}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
}


def make_config(td_block=None, quantization=True, input_size=INPUT_SIZE):
    algos = [dict(td_block or {"algorithm": "tensor_decomposition"})]
    if quantization:
        algos.append(copy.deepcopy(QUANTIZATION))
    return nncf.NNCFConfig.from_dict({"input_info": {"sample_size": list(input_size)}, "compression": algos})


def loader(n=16, batch_size=8, input_size=INPUT_SIZE, classes=10):
    data = [(torch.randn(*input_size[1:]), int(torch.randint(classes, ()))) for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def compress(model=None, td_block=None, quantization=True, compression_state=None):
    config = make_config(td_block, quantization)
    if quantization:
        config = register_default_init_args(config, loader())
    model = model if model is not None else LowRankCNN()
    return create_compressed_model(model, config, compression_state=compression_state)


def train_steps(ctrl, model, steps=3, lr=0.01):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    ctrl.scheduler.epoch_step()
    for _, (x, y) in zip(range(steps), loader()):
        ctrl.scheduler.step()
        loss = torch.nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
