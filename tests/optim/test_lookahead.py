"""Lookahead as airbench94 applies it (cv_jax.optim.lookahead)."""

import jax.numpy as jnp
import numpy as np
import pytest

from cv_jax.optim.lookahead import Lookahead


def test_lookahead_syncs_every_k_steps_with_the_ramped_decay_and_ends_on_the_slow_copy():
    la = Lookahead(every=5, decay=0.95**5, power=3.0, total_steps=12)
    slow = {"w": jnp.zeros(2)}
    for count in range(1, 13):
        fast = {"w": jnp.full(2, float(count))}
        new_fast, new_slow = la(fast, slow, jnp.asarray(count))
        if count in (5, 10):
            d = 0.95**5 * (count / 12) ** 3
            expected = slow["w"] + (1 - d) * (fast["w"] - slow["w"])
            np.testing.assert_allclose(new_slow["w"], expected, rtol=1e-6)
            np.testing.assert_array_equal(new_fast["w"], new_slow["w"])
        else:
            np.testing.assert_array_equal(new_slow["w"], slow["w"])
            # after the run's last step the weights are the slow copy
            expected_fast = slow["w"] if count == 12 else fast["w"]
            np.testing.assert_array_equal(new_fast["w"], expected_fast)
        slow = new_slow
    assert float(la.decay_at(jnp.asarray(12))) == pytest.approx(0.95**5)
