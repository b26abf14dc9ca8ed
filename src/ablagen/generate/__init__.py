"""Generate: a model file and its options -> one standalone script per variant."""
