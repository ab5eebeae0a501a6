"""Image classification: datasets, the training loop, evaluation and the linear-classifier comparison."""
