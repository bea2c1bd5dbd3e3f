"""The insertion-order sums (``lib.core.native.order_sums``, behind ``lib.core.landscape.delta.OrderSums``): the C
kernel and torch's operations against explicit loops over orders, thetas and k; the engine choice validated."""
import numpy as np
import pytest
import torch

from tests.core.conftest import explicit_d

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.mark.parametrize("B", [1, 3, 4, 16, 21, 37])
def test_order_sums_equal_explicit_loops_on_both_engines(monkeypatch, B):
    """OrderSums (the C kernel where it builds, and torch's operations) against explicit loops over orders, thetas
    and k; several add() calls of ragged sizes (lane padding, more than 16 thetas per call)."""
    from lib.core.landscape.delta import OrderSums
    from lib.core.native import order_sums, refresh
    N, R = 23, 4
    L = torch.rand(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(B)) * 3
    engines = {}
    for engine in ("native", "torch"):
        if engine == "torch":
            monkeypatch.setenv("LIB_ORDER_SUMS", "0")
        refresh()
        try:
            acc = OrderSums(N, R, seed=7, device="cpu")
            acc.add(L[:B // 2 + 1])
            acc.add(L[B // 2 + 1:])
        finally:
            monkeypatch.delenv("LIB_ORDER_SUMS", raising=False)
            refresh()
        engines[acc.engine] = acc
    assert "torch" in engines
    if order_sums.available():
        assert set(engines) == {"native", "torch"}
    perms = engines["torch"].perms.numpy()
    want = np.zeros((R, N - 1))
    for r in range(R):
        for row in L.numpy():
            want[r] += explicit_d(row[perms[r]]) ** 2
    for acc in engines.values():
        np.testing.assert_array_equal(acc.perms.numpy(), perms)
        np.testing.assert_allclose(acc.order_sum.numpy(), want, rtol=1e-13, atol=0)


def test_order_sums_engine_choice_is_validated():
    from lib.core.landscape.delta import OrderSums
    from lib.core.native import order_sums
    assert OrderSums(9, 2, 0, "cpu", engine="torch").engine == "torch"
    assert OrderSums(9, 2, 0, "cpu").engine == ("native" if order_sums.available() else "torch")
    with pytest.raises(ValueError, match="engine"):
        OrderSums(9, 2, 0, "cpu", engine="gpu")
