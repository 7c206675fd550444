"""Orchestration: run folders and the Trainer (run), checkpoints, and the commands' work: train,
evaluate (checkpoints or predicted masks), predict, cross-validation and compare."""
