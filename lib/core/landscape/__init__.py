"""The loss landscape in a D-dim subspace: sampling distributions p(theta) (``sampling``), bases and per-sample losses
at w* + P^T theta (``subspace``), Monte-Carlo Delta_k curves (``delta``), the quadratic model's exact moments
(``quadratic``) from per-sample jets (``jet``), the logit-space surrogate (``surrogate``) and Hessian-norm bounds
(``bounds``)."""
