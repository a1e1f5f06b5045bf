"""The formulas of softmaxce, written once against the Array API (see ``docs/internals.md``).

``softmax``: the softmax family and its vector-Jacobian products; ``rows``: the row contract
of the fused loss (statistics, merge, loss, gradient); ``reduce``: denominators, reductions
and per-row gradient scales; ``probs``: cross-entropy on probabilities; ``quirks``: masks of
the NaNs some frameworks produce. Nothing here validates user input, writes into an array, or
imports from the rest of the package. With NumPy arrays the callers silence NumPy's
floating-point warnings (``np.errstate``): overflow to inf and 0/0 are results here.
"""
