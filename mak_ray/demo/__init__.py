"""Demo datasets: a long-tailed Fashion-MNIST target, an open-world pool with generated OOD images, eval sets."""
