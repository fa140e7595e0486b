"""Catalogue photo-z baselines: redshifts from the dereddened colours alone.

One module per baseline, named in ``registry.BASELINES``; each gives ``make(settings, bins)``, a
model with the ``registry.Baseline`` interface: ``fit`` on the training objects' colour features
(``features.colour_features``) and z_spec, then ``predict`` z_p and, where the baseline gives
one, a PDF over the networks' redshift bins (``features.RedshiftBins``). ``run.predict_baseline``
chooses the objects (the image models' at each label fraction) and writes the predictions.

A baseline is also a model kind (``ssl_photoz.core.kinds``: its figure label, its config section,
whether it has a PDF); the config key ``baselines`` selects which run. So adding one is its
module, its line in ``registry.py``, its kind and its schema section: the rules, figures, summary
and explorer follow the registries.

The registry is a module of its own, not this file: every module of the package counts this
file in its code digest (``core.codehash``), and the simulated survey's check uses the kNN, so a
registry here would rerun the survey, and all that follows, whenever a baseline is added.
"""
