"""Plain-PyTorch model definitions (ResNet50-v1.5, RNN-T, DLRM); import the module you need."""
