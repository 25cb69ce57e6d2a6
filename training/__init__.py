"""Training-side tools: dataset preparation, filelists and the training loop."""
