"""One training setup and loop for every verb that trains: batching, losses, checkpoints, fit."""
