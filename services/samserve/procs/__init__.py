"""Child processes samserve starts: a private redis-server and a private tritonserver."""
