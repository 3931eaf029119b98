"""BatchNorm statistics re-estimated on data: the exact mean and variance of the layer's inputs."""
import torch

from earlyphase.probes.batchnorm import has_batchnorm, reestimate_bn


def test_reestimate_gives_the_inputs_moments_and_keeps_the_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    x = torch.randn(1000, 3) * 3 + 1
    reestimate_bn(model, x, batch=250)
    h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)
    # equal batches: the average of the batch variances, within a few percent of the whole set's
    assert torch.allclose(model[1].running_var, h.var(0), rtol=0.05)
    assert not model.training and model[1].momentum == 0.1


def test_a_network_without_batchnorm_is_untouched():
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not has_batchnorm(model)
    reestimate_bn(model, torch.randn(10, 3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
