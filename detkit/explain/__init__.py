"""Explaining what a classifier or a detector looks at (CS231n lecture 12).

* :mod:`detkit.explain.saliency`: which pixels matter to one score (saliency,
  occlusion) and images that maximise one (class models, DeepDream);
* :mod:`detkit.explain.features`: what a network has learned (first-layer
  filters, activations, penultimate features, nearest neighbours, PCA/t-SNE);
* :mod:`detkit.explain.figures`: :func:`explain_classifier` and
  :func:`explain_detector` run those methods and write one PNG per method;
* :mod:`detkit.explain.methods`: the method names;
* :mod:`detkit.explain.cli`: the ``detkit explain`` command.

The package itself imports nothing, so building the command line stays cheap; import
from the modules above.

Drawing that the engine uses (detections, training curves) stays in :mod:`detkit.viz`.
"""
