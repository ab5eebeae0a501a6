"""Visualization: detections drawn on images, training plots."""

from detkit.viz.draw import draw_detections, save_image
from detkit.viz.plots import plot_loss_curve

__all__ = ["draw_detections", "plot_loss_curve", "save_image"]
