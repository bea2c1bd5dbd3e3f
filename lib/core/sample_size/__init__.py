"""From curves to sample sizes: how Delta_k decays (``decay``), the sufficient sample size K(Delta) with its spread,
band and Delta* (``sufficient``), the band's measured coverage (``band_coverage``), and the prediction benchmark's
targets and scores (``prediction``), pilots (``pilot``) and predictors (``predictors``)."""
