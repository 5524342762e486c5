"""Activation memory derived by tracing a model's own code (needs torch and diffusers: ``vramgate[trace]``).

``vramgate profile trace`` is the command; :mod:`vramgate.trace.dit` traces one DiT,
:mod:`vramgate.trace.wan_reference` restates the forward of Wan's ``generate.py``, and
:mod:`vramgate.trace.profiles` turns traces into the profiles the estimator loads without torch.
"""
