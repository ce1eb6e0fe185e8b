"""Image classification with RSGD(m): CIFAR-100, ImageNet, Fashion-MNIST (paper, section 7.1)."""
