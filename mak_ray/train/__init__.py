"""SimCLR training on Ray Train: the loss, the LR schedule and the TorchTrainer driver."""
