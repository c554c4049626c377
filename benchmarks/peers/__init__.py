"""Other servers that the load benchmark measures beside ours, on the same model and machine."""
