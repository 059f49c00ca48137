"""What runs inside a cloud sandbox: the container image (Dockerfile) and its entry point."""
