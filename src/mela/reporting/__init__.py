"""What people look at: live progress, metrics.csv and TensorBoard, plots, and `mela report`."""
