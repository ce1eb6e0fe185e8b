"""The non-finite-loss stop names the epoch and the first bad step."""

import numpy as np
import pytest

from examples.common.nonfinite import NonFiniteLossError, check_losses


def test_finite_losses_pass():
  check_losses(np.array([2.3, 1.7, 0.9]), epoch=0, first_step=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_non_finite_step_is_named(bad):
  losses = np.array([2.3, 1.7, bad, np.nan])
  with pytest.raises(NonFiniteLossError, match=r"epoch 4, step 102\b"):
    check_losses(losses, epoch=4, first_step=100)
