"""The original work's reference numbers (``lib.core.reference``) are the values docs/specification.md section 8
quotes, every one of them."""
import re

from lib import REPO_ROOT
from lib.core import reference


def _section_8() -> str:
    """Section 8 of the specification ("What the original work reports"), its whitespace collapsed."""
    text = (REPO_ROOT / "docs" / "specification.md").read_text()
    start = text.index("## 8. ")
    return " ".join(text[start:text.index("## 9. ", start)].split())


def test_reference_numbers_are_the_ones_the_specification_quotes():
    s = _section_8()
    assert "`lib/core/reference.py`" in s
    top = re.search(r"top eigenvalues \(mean of 50 networks\): about ([0-9., ]+); index 31 about ([0-9.]+);", s)
    assert [float(v) for v in top.group(1).split(", ")] == reference.TOP_EIGENVALUES
    assert float(top.group(2)) == reference.EIGENVALUE_31
    eigen = re.search(r"`D = 10`, sigma = 1: `Delta_k` about (.+?); `k\^2 Delta_k` about ([0-9.]+) to ([0-9.]+) ", s)
    pairs = re.findall(r"([0-9.]+e-[0-9]+) \((?:k = )?([0-9]+)\)", eigen.group(1))
    assert {int(k): float(v) for v, k in pairs} == reference.DELTA_EIGEN_D10_SIGMA1 and len(pairs) == 4
    assert (float(eigen.group(2)), float(eigen.group(3))) == reference.K2_DELTA_EIGEN_RANGE
    random = re.search(r"random directions: `k\^2 Delta_k` about ([0-9.e-]+) for sigma <= 1 and ([0-9.e-]+) at "
                       r"sigma = 10", s)
    assert float(random.group(1)) == reference.K2_DELTA_RANDOM_SIGMA_LE1
    assert float(random.group(2)) == reference.K2_DELTA_RANDOM_SIGMA10
    table = re.search(r"`Delta` = ([0-9.]+) \(MNIST\) / ([0-9.]+) \(Fashion-MNIST\), `K` = ([0-9]+) to ([0-9]+) "
                      r"batches, ([0-9,]+) to ([0-9,]+) s per row", s)
    delta_mnist, delta_fashion, k_lo, k_hi, s_lo, s_hi = table.groups()
    assert reference.TABLE1 == {"mnist": {"delta": float(delta_mnist)},
                                "fashion_mnist": {"delta": float(delta_fashion)}, "K_batches": (int(k_lo), int(k_hi)),
                                "seconds_per_row": (int(s_lo.replace(",", "")), int(s_hi.replace(",", "")))}
