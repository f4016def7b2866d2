"""BatchNorm statistics after training: recomputed over the training data, so eval mode matches the final weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fnas.app.train import TrainConfig, recalibrate_bn, train_model


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, 16, 1, generator=g) + 3.0 * y.view(-1, 1, 1, 1)  # separable, offset inputs
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, (3, 1), padding=(1, 0)), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def test_running_statistics_become_the_exact_average_over_the_data(single_thread):
    loader = _data()
    model = _net()
    train_model(model, loader, cfg=TrainConfig(epochs=2, lr=0.5, recalibrate_bn=False), progress=False)
    bn = model[1]
    stale = bn.running_mean.clone()
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in loader])  # (N, 8, 16, 1): the BN's inputs
    batch_means = torch.stack([model[0](x).mean(dim=(0, 2, 3)) for x, _ in loader]).detach()
    model.eval()
    assert recalibrate_bn(model, loader) == 1
    # cumulative average of the per-batch means (equal batches): the data's mean under the final weights
    torch.testing.assert_close(bn.running_mean, batch_means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(stale, bn.running_mean, atol=1e-3)  # training had left them stale
    assert bn.momentum == 0.1 and not model.training  # momentum and the eval mode it was given are restored


def test_train_model_recalibrates_by_default_and_eval_matches_batch_statistics(single_thread):
    loader = _data()
    model = _net()
    train_model(model, loader, cfg=TrainConfig(epochs=2, lr=0.5), progress=False)
    x = torch.cat([x for x, _ in loader])
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    bn = model[1]
    with torch.no_grad():
        feats = model[0](x)
    torch.testing.assert_close(bn.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert eval_logits.shape == (96, 3)


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    assert recalibrate_bn(model, _data()) == 0
