"""Arms: importance turned into noise scales, and the training arms that use them."""
